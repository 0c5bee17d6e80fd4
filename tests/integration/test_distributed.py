"""DDP and FSDP2 on 2 CPU processes (gloo) follow one process on the same global batch; the FSDP2 plan.

The colour set has 8 samples; one process takes them as one batch of 8, two processes as 4 + 4, so every
optimizer step sees the same global batch (the sample-to-rank split does not matter: the loss is a mean
over the global batch's supervised tokens, see ``MedVLMModule._global_token_mean``). Tolerances: fp32
everywhere, only the order of reductions differs -- losses within 1e-4 (relative), exported weights
within 2e-5 (absolute; 4 Adam steps of lr 1e-3 move weights by ~4e-3).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from medmvl.cli.train import train
from medmvl.models.build import build_model
from medmvl.training.distributed import compile_blocks, is_sharded, shard_model, unsharded_copy
from medmvl.training.stages import apply_stage
from tests.conftest import compose_train, run_entry, scratch
from tests.helpers.colour import write_colour_set

STEPS = 4
COMMON = [
    "trainer.max_epochs=100",
    "trainer.log_every_n_steps=1",
    "stage.llm.lr=1e-3",
    "stage.connector.lr=1e-3",
    # a constant learning rate: a cosine schedule would depend on max_steps, which the resume test changes
    "~scheduler",
]
TWO_CPU = ["trainer.devices=2", "trainer.accelerator=cpu", "data.batch_size=4"]
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 2e-5


def _losses(run: Path, after: int = -1) -> list[float]:
    """The training losses in the run's CSV logged after step ``after``, in step order."""
    with open(run / "csv" / "metrics.csv") as f:
        rows = [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]
    return [loss for step, loss in sorted(rows) if step > after]


def _last_step(run: Path) -> int:
    with open(run / "csv" / "metrics.csv") as f:
        return max(int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss"))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def _assert_close_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    assert worst < WEIGHT_ATOL, f"exported weights differ by up to {worst:.2e}"


def _train_cli(run: Path, *args: str) -> None:
    out = run_entry("train.py", *COMMON, *args, f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-4000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("colours")
    ann = write_colour_set(folder)
    return [f"data.annotations={ann}", f"data.image_dir={folder / 'imgs'}"]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, data: list[str]) -> Iterator[Path]:
    """The reference: one process, batch of 8, 4 steps, model exported."""
    with scratch(tmp_path_factory, "single") as run:
        yield _reference(run, data)


def _reference(run: Path, data: list[str]) -> Path:
    train(compose_train([*COMMON, f"trainer.max_steps={STEPS}", "data.batch_size=8", *data], output_dir=run))
    losses = _losses(run)
    assert len(losses) == STEPS
    assert losses[-1] < losses[0] - 0.05, "the reference run must actually learn"
    return run


def _assert_follows(losses: list[float], ref: list[float]) -> None:
    assert losses == pytest.approx(ref, rel=LOSS_RTOL), f"{losses} vs single process {ref}"


@pytest.mark.slow
def test_ddp_follows_single_process(tmp_path: Path, data: list[str], single: Path) -> None:
    run = tmp_path / "ddp"
    _train_cli(run, "trainer=ddp", "trainer.precision=32-true", f"trainer.max_steps={STEPS}", *TWO_CPU, *data)
    _assert_follows(_losses(run), _losses(single))
    _assert_close_weights(_weights(run), _weights(single))


@pytest.mark.slow
def test_fsdp_save_resume_export(tmp_path: Path, data: list[str], single: Path) -> None:
    """FSDP2: 2 steps, sharded checkpoint, resume for 2 more, export one safetensors file."""
    run = tmp_path / "fsdp"
    fsdp = ["trainer=fsdp", "trainer.strategy.param_dtype=null", *TWO_CPU, *data]
    _train_cli(run, *fsdp, "trainer.max_steps=2", "save_model=false")
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2, "one shard per rank"
    first, first_step = _losses(run), _last_step(run)
    _train_cli(run, *fsdp, f"trainer.max_steps={STEPS}", "ckpt_path=last")
    _assert_follows(first + _losses(run, after=first_step), _losses(single))
    assert sorted(_weights(run)) == sorted(_weights(single))
    _assert_close_weights(_weights(run), _weights(single))


# ---- the sharding plan, in this process (a 1-rank gloo group): units, equivalence, export ----


@pytest.fixture
def one_rank(tmp_path: Path) -> Iterator[Any]:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def _tiny(stage: str) -> tuple[Any, Any]:
    cfg = compose_train([f"stage={stage}"])
    torch.manual_seed(0)
    model = build_model(cfg)
    apply_stage(model, OmegaConf.to_container(cfg.stage, resolve=True))
    return model, cfg


def _batch(model: Any) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 5000, (2, 40), generator=g)
    ids[:, 3:19] = model.image_token_id
    labels = ids.clone()
    labels[:, :30] = -100
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "pixel_values": torch.randn(2, 3, 32, 32, generator=g),
    }


@pytest.mark.parametrize("stage", ["finetune", "lora"])
def test_units_never_mix_frozen_and_trainable(one_rank: Any, stage: str) -> None:
    model, _ = _tiny(stage)
    units = shard_model(model, one_rank)
    names = [u.name for u in units]
    assert units[-1].name == "root" and units[-1].numel == 0  # everything else is in a unit of its own kind
    assert sum(u.numel for u in units) == sum(
        p.numel() for p in {id(p): p for p in model.parameters()}.values()
    )
    llm_layers = [n for n in names if ".layers." in n and n.startswith("llm")]
    if stage == "lora":  # every LoRA-wrapped decoder layer splits into adapters and frozen base weights
        assert len(llm_layers) == 4 and sum(n.endswith("[trainable]") for n in llm_layers) == 2
        assert all(not u.requires_grad for u in units if u.name.endswith("[frozen]"))
    else:
        assert len(llm_layers) == 2 and all(u.requires_grad for u in units if u.name in llm_layers)
    for name in ("encoder.model.encoder.layers.0", "encoder.model.encoder.layers.1"):
        assert name in names  # one unit per vision block


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_sharded_model_computes_the_same_loss_and_gradients(one_rank: Any, checkpointing: bool) -> None:
    plain, _ = _tiny("finetune")
    sharded, _ = _tiny("finetune")
    shard_model(sharded, one_rank, activation_checkpointing=checkpointing)
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    wrapped = [isinstance(m, CheckpointWrapper) for m in sharded.llm.model.layers]
    assert all(wrapped) if checkpointing else not any(wrapped)
    batch = _batch(plain)
    want, got = plain(**batch)["loss"], sharded(**batch)["loss"]
    want.backward()
    got.backward()
    torch.testing.assert_close(got, want)
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    for name, p in sharded.named_parameters():
        key = name.replace("_checkpoint_wrapped_module.", "")
        if key in grads:
            torch.testing.assert_close(p.grad.full_tensor(), grads[key], atol=1e-6, rtol=1e-5)
    assert len(grads) > 10


def test_unsharded_copy_holds_the_trained_weights(one_rank: Any) -> None:
    model, cfg = _tiny("lora")
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    shard_model(model, one_rank, activation_checkpointing=True)
    rebuild = lambda: _tiny("lora")[0]  # noqa: E731
    plain = unsharded_copy(model, rebuild, rank=0)
    assert not is_sharded(plain)
    state = plain.state_dict()
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(state[key], value), key


def test_compile_switch_compiles_decoder_layers_in_place() -> None:
    """``compile=true``: each LLM decoder layer compiled in place (compilation itself happens at the first
    call, ~1 min on CPU, so not here); checkpoint and export keys do not change."""
    model, _ = _tiny("finetune")
    keys = set(model.state_dict())
    assert compile_blocks(model.llm) == 2
    assert all(layer._compiled_call_impl is not None for layer in model.llm.model.layers)
    assert set(model.state_dict()) == keys
