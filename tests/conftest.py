"""Shared fixtures: compose the real ``conf/`` once, copy per test, send outputs to ``tmp_path``.

Tests are laid out like the code: ``unit/<package>`` (fast, in-process; ``make test-fast``),
``integration/`` (subprocess runs, training, distributed, kill-and-resume, browser) and ``demo/`` (the
embedded demo). Builders of test data and the fixtures every folder uses live in ``helpers/``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

import medmvl  # noqa: E402

# fixtures shared by every folder: colour-PNG training sets, tokenizers and files, tiny and saved models
pytest_plugins = [
    "tests.helpers.colour",
    "tests.helpers.files",
    "tests.helpers.records",
    "tests.helpers.models",
]

CONF_DIR = Path(medmvl.__file__).parent / "conf"
ROOT = Path(__file__).resolve().parents[1]


def run_entry(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run a root entry point (``train.py``, ``infer.py``) in a fresh process, offline, from the repo root."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


@contextmanager
def scratch(factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A fresh folder for a module/package fixture, deleted when the fixture is torn down.

    ``tmp_path_retention_policy = "failed"`` removes a passed test's ``tmp_path``, but folders from
    ``tmp_path_factory`` live until the session ends; fixtures holding checkpoints use this instead.
    """
    path = factory.mktemp(name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def compose_train(overrides: list[str] | None = None, output_dir: Path | None = None) -> DictConfig:
    """Compose ``train.yaml`` from the real config tree with ``overrides``; outputs go to ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides or [])
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> DictConfig:
    """The default tiny stack (tiny2d + mlp + tiny LLM), CPU trainer, outputs under ``tmp_path``."""
    return compose_train(["logger=csv"], output_dir=tmp_path)
