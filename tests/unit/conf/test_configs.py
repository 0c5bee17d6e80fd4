"""Every config file composes, and every ``_target_`` node's keys bind to its constructor's signature.

Nothing is instantiated, so the 3B configs are checked offline in milliseconds.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from tests.conftest import CONF_DIR, compose_train

SKIP_GROUPS = {"hydra", "paths"}
EVALUATE_GROUPS = {"protocol", "benchmark"}
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in SKIP_GROUPS)
OPTIONS = [
    (g, str(f.relative_to(CONF_DIR / g).with_suffix("")))
    for g in GROUPS
    for f in sorted((CONF_DIR / g).rglob("*.yaml"))
]
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            yield from _target_nodes(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _target_nodes(item, f"{path}[{i}]")


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_binds(group: str, option: str, tmp_path) -> None:
    if group in EVALUATE_GROUPS:  # groups of evaluate.yaml, not train.yaml
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="evaluate", overrides=[f"{group}={option}"])
    else:
        cfg = compose_train([f"{group}={option}"], output_dir=tmp_path)
    nodes = list(_target_nodes(cfg))
    assert nodes, "no _target_ node composed"
    for path, node in nodes:
        target = get_object(node._target_)
        sig = inspect.signature(target)
        kwargs = {k: None for k in node if k not in HYDRA_KEYS}
        try:
            sig.bind_partial(**kwargs)
        except TypeError as err:
            raise AssertionError(
                f"{group}={option}: {path} keys {sorted(kwargs)} do not fit {node._target_}{sig}: {err}"
            ) from None


def test_unknown_option_names_the_choices(tmp_path) -> None:
    with pytest.raises(Exception, match="(?s)Could not find 'encoder/sigilp'.*siglip"):
        compose_train(["encoder=sigilp"], output_dir=tmp_path)


def test_unknown_key_fails(tmp_path) -> None:
    with pytest.raises(Exception, match="nonexistent_key"):
        compose_train(["trainer.nonexistent_key=1"], output_dir=tmp_path)


def test_resolves_without_network(tmp_path) -> None:
    cfg = compose_train(["encoder=siglip", "llm=qwen2.5"], output_dir=tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["llm"]["tokenizer"]["name_or_path"] == "Qwen/Qwen2.5-3B-Instruct"
    assert resolved["encoder"]["name_or_path"].startswith("google/siglip")
