"""Group options on the command line mean exactly that option, under every experiment.

An experiment overlay selects options (``override /encoder: demo_2d``) and sets run settings (budget,
report); the settings of a model or data option live in that option's own file. So ``experiment=X
encoder=Y`` composes ``encoder`` exactly as ``encoder=Y`` alone does, for every experiment and every
option of the model and data groups: nothing of X's own choice is left behind in Y.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from tests.conftest import CONF_DIR, compose_train

# the groups whose options are parts of the model and its data (run settings such as trainer.max_steps,
# scheduler.warmup_ratio or callbacks carry over from an experiment on purpose: they are its budget)
PART_GROUPS = ("encoder", "connector", "llm", "data", "stage", "encoder3d", "connector3d")
EXPERIMENTS = sorted(
    str(p.relative_to(CONF_DIR / "experiment").with_suffix(""))
    for p in (CONF_DIR / "experiment").rglob("*.yaml")
)
OPTIONS = {g: sorted(p.stem for p in (CONF_DIR / g).glob("*.yaml")) for g in PART_GROUPS}
DEMO_MODULES = ("medmvl.demo", "demo_report", "caption_pretrain")


@pytest.fixture(scope="module")
def compose() -> Iterator[Callable[[list[str]], DictConfig]]:
    """``compose(overrides)`` of train.yaml, Hydra initialised once for the module (hundreds of calls)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda overrides: hydra_compose(config_name="train", overrides=overrides)
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def alone(compose) -> dict[tuple[str, str], Any]:
    """Each group's node when only ``group=option`` is chosen (no experiment), unresolved."""
    return {
        (g, o): OmegaConf.to_container(compose([f"{g}={o}"])[g], resolve=False)
        for g, options in OPTIONS.items()
        for o in options
    }


def _experiment_keys(name: str) -> set[str]:
    """Top-level keys an experiment file sets itself (besides its defaults list)."""
    return set(yaml.safe_load((CONF_DIR / "experiment" / f"{name}.yaml").read_text()) or {}) - {"defaults"}


def test_experiments_are_listed() -> None:
    assert {"demo", "demo_3d", "medm_vl/2d_3b_pretrain", "medm_vl/ct_chest_3b_lora"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_sets_no_keys_of_model_or_data_options(experiment: str) -> None:
    assert not _experiment_keys(experiment) & set(PART_GROUPS), (
        f"experiment={experiment} sets keys of {sorted(_experiment_keys(experiment) & set(PART_GROUPS))}: "
        "put them in an option file of that group and select it"
    )


@pytest.mark.slow  # ~600 compositions: make test runs it, make test-fast leaves it to the check above
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_option_override_gives_that_option(experiment: str, compose, alone) -> None:
    wrong = []
    for group, options in OPTIONS.items():
        for option in options:
            cfg = compose([f"experiment={experiment}", f"{group}={option}"])
            got = OmegaConf.to_container(cfg[group], resolve=False)
            if got != alone[group, option]:
                wrong.append(f"{group}={option}")
    assert not wrong, (
        f"experiment={experiment}: these overrides do not compose to the option's own keys: {wrong}"
    )


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (str(k), *_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [str(node)]


def test_design_card_command_has_no_demo_in_it() -> None:
    cfg = compose_train(
        ["encoder=siglip", "llm=qwen2.5", "data.annotations=train.json", "data.image_dir=imgs/"]
    )
    assert cfg.encoder._target_ == "medmvl.models.encoders.siglip.SiglipEncoder"
    assert cfg.llm.name_or_path == "Qwen/Qwen2.5-3B-Instruct"
    assert (
        cfg.data._target_ == "medmvl.data.datamodule.MedVLDataModule" and cfg.data.annotations == "train.json"
    )
    assert OmegaConf.to_container(cfg.stage) == OmegaConf.to_container(
        compose_train(["stage=finetune"]).stage
    )
    assert cfg.post_train is None and cfg.task_name == "train"
    text = _strings(OmegaConf.to_container(cfg, resolve=False))
    demo = [s for s in text if any(m in s for m in DEMO_MODULES) or "demo_2d" in s or "captions.json" in s]
    assert not demo, f"demo keys or targets in the design-card command: {demo}"
    for key in ("prepare", "backbone", "steps", "unknown_text"):
        assert key not in cfg.encoder, key
