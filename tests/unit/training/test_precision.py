"""``trainer.precision=auto``: explicit values pass through, CUDA with bf16 is bf16-mixed, the CPU is probed."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from hydra.utils import instantiate

from medmvl.cli.train import resolve_trainer_precision
from medmvl.training import precision
from medmvl.training.precision import BF16, FP32, choose, resolve_precision
from tests.conftest import compose_train


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No probe result from an earlier test, in the process or inherited through the environment."""
    monkeypatch.setattr(precision, "_CACHE", {})
    monkeypatch.setenv(precision._ENV, "")


def _no_probe() -> dict[str, Any]:
    raise AssertionError("probed")


def _timings(fp32_ms: float, bf16_ms: float) -> Any:
    return lambda: {"fp32_step_ms": fp32_ms, "bf16_step_ms": bf16_ms, "threads": 2}


@pytest.mark.parametrize("value", ["32-true", "bf16-mixed", "16-mixed", "64-true", 32, "transformer-engine"])
def test_explicit_values_pass_through(value: Any) -> None:
    for accelerator in ("cpu", "gpu", "auto"):
        resolved = resolve_precision(value, accelerator, probe=_no_probe, cuda_available=True)
        assert resolved.precision == str(value) and resolved.requested == str(value)
        assert resolved.measurements == {}


@pytest.mark.parametrize(
    ("fp32_ms", "bf16_ms", "expected"),
    [
        (30.0, 15.0, BF16),  # 2x faster
        (30.0, 26.0, BF16),  # 1.154x: just over the margin
        (30.0, 27.0, FP32),  # 1.11x: within noise, fp32 kept
        (30.0, 30.0, FP32),
        (12.3, 980.0, FP32),  # no native bf16
    ],
)
def test_choice_rule_with_injected_timings(fp32_ms: float, bf16_ms: float, expected: str) -> None:
    resolved = resolve_precision("auto", "cpu", probe=_timings(fp32_ms, bf16_ms))
    assert resolved.precision == expected == choose(fp32_ms, bf16_ms)
    m = resolved.measurements
    assert m["fp32_step_ms"] == fp32_ms and m["bf16_step_ms"] == bf16_ms
    assert m["bf16_speedup"] == pytest.approx(fp32_ms / bf16_ms) and m["margin"] == precision.MARGIN
    line = resolved.describe()
    assert line.startswith(
        f"precision=auto -> {expected} (fp32 step {fp32_ms:.1f} ms, bf16 step {bf16_ms:.1f} ms"
    )


def test_margin_is_a_parameter() -> None:
    assert resolve_precision("auto", "cpu", probe=_timings(30, 27), margin=1.05).precision == BF16
    assert resolve_precision("auto", "cpu", probe=_timings(30, 15), margin=3.0).precision == FP32


def test_gate_without_step_numbers_keeps_fp32() -> None:
    gated = lambda: {"matmul_fp32_ms": 0.1, "matmul_bf16_ms": 8.0, "reason": "bf16 matmul 80x slower"}  # noqa: E731
    resolved = resolve_precision("auto", "cpu", probe=gated)
    assert resolved.precision == FP32 and "80x slower" in resolved.describe()


def test_auto_on_cpu_probes_once_and_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    resolved = resolve_precision("auto", "cpu", width=64, cuda_available=False)
    assert resolved.precision in (BF16, FP32) and resolved.requested == "auto"
    m = resolved.measurements
    assert m["width"] == 64 and m["threads"] == 1 and m["run_threads"] == torch.get_num_threads()
    assert m["probe_ms"] > 0
    assert m["matmul_fp32_ms"] > 0 and m["matmul_bf16_ms"] > 0
    if "reason" not in m:  # the gate let the step probe run
        assert m["fp32_step_ms"] > 0 and m["bf16_step_ms"] > 0
        assert m["pairs"] >= precision.REPEATS
        assert resolved.precision == (BF16 if m["bf16_speedup"] >= precision.MARGIN else FP32)
    # measured once per process (and width); a process Lightning's launcher starts inherits the choice
    monkeypatch.setattr(precision, "probe_cpu", lambda **_: _no_probe())
    assert resolve_precision("auto", "cpu", width=64, cuda_available=False) is resolved
    monkeypatch.setattr(precision, "_CACHE", {})
    inherited = resolve_precision("auto", "cpu", width=64, cuda_available=False)
    assert inherited == resolved


def test_probe_measures_both_steps_where_bf16_matmuls_are_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "MATMUL_GATE", float("inf"))  # the step probe runs on any CPU
    threads = torch.get_num_threads()
    m = precision.probe_cpu(repeats=1, width=64, threads=None)
    assert m["fp32_step_ms"] > 0 and m["bf16_step_ms"] > 0 and "reason" not in m
    assert m["threads"] == threads == torch.get_num_threads()


def test_cuda_with_bf16_is_bf16_mixed_without_a_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(precision, "probe_cpu", lambda **_: _no_probe())
    for accelerator in ("gpu", "cuda", "auto", None):
        resolved = resolve_precision("auto", accelerator)
        assert resolved.precision == BF16 and resolved.device == "cuda"
        assert "no probe" in resolved.describe()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "gpu").precision == FP32  # 16-mixed only when asked for
    # the CPU accelerator on a CUDA machine is still the CPU: probed
    assert resolve_precision("auto", "cpu", probe=_timings(30, 10)).precision == BF16


def test_gpu_asked_for_without_cuda_and_other_accelerators() -> None:
    assert resolve_precision("auto", "gpu", probe=_no_probe, cuda_available=False).precision == FP32
    mps = resolve_precision("auto", "mps", probe=_no_probe, cuda_available=False)
    assert mps.precision == FP32 and mps.device == "mps"
    auto = resolve_precision("auto", "auto", probe=_timings(30, 10), cuda_available=False)
    assert auto.precision == BF16 and auto.device == "cpu"


def test_train_path_resolves_auto_from_the_real_conf(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(precision, "probe_cpu", lambda **kw: _timings(12.3, 980.0)() | {"width": kw["width"]})
    cfg = compose_train(["trainer=cpu", "trainer.precision=auto"], output_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="medmvl.train"):
        resolved = resolve_trainer_precision(cfg, width=64)
    assert cfg.trainer.precision == FP32 and resolved.measurements["width"] == 64
    assert "precision=auto -> 32-true (fp32 step 12.3 ms, bf16 step 980.0 ms: 0.01x" in caplog.text
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.precision == FP32

    monkeypatch.setattr(precision, "_CACHE", {})
    monkeypatch.setenv(precision._ENV, "")
    monkeypatch.setattr(precision, "probe_cpu", lambda **kw: _timings(30.0, 10.0)())
    cfg = compose_train(["trainer.precision=auto"], output_dir=tmp_path)
    resolve_trainer_precision(cfg, width=64)
    assert cfg.trainer.precision == BF16
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.precision == BF16


def test_train_path_leaves_explicit_precision(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "probe_cpu", lambda **_: _no_probe())
    for trainer, expected in (("cpu", FP32), ("gpu", BF16), ("fsdp", FP32)):
        cfg = compose_train([f"trainer={trainer}"], output_dir=tmp_path)
        resolved = resolve_trainer_precision(cfg, width=64)
        assert cfg.trainer.precision == expected == resolved.precision and resolved.requested == expected


def test_fsdp_policy_keeps_32_true(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "probe_cpu", lambda **_: _no_probe())
    cfg = compose_train(["trainer=fsdp", "trainer.precision=auto"], output_dir=tmp_path)
    resolved = resolve_trainer_precision(cfg, width=64)
    assert cfg.trainer.precision == FP32 and "bfloat16" in resolved.describe()
    cfg = compose_train(["trainer=fsdp", "trainer.precision=auto", "trainer.strategy.param_dtype=null"])
    monkeypatch.setattr(precision, "probe_cpu", lambda **kw: _timings(30.0, 10.0)())
    assert resolve_trainer_precision(cfg, width=64).precision == BF16  # no policy: probed like cpu


@pytest.mark.slow
def test_a_run_with_auto_logs_the_choice_in_its_hparams(tmp_path, colour_data: list[str]) -> None:
    """train() end to end: the trainer runs in the resolved precision, the hparams hold what was measured."""
    import yaml

    from medmvl.cli.train import train

    run = tmp_path / "run"
    overrides = ["trainer.precision=auto", "trainer.max_steps=1", "trainer.limit_val_batches=0"]
    cfg = compose_train([*overrides, "save_model=false", *colour_data], output_dir=run)
    train(cfg)
    hparams = yaml.safe_load(next(run.rglob("hparams.yaml")).read_text())
    assert hparams["trainer"]["precision"] == cfg.trainer.precision and cfg.trainer.precision in (BF16, FP32)
    assert hparams["precision_auto"]["width"] == 64 and "matmul_fp32_ms" in hparams["precision_auto"]
