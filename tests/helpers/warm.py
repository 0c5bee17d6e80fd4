"""Imported by the test forkserver only (see ``runner``): imports and the tokenizer load happen once there,
and every child training run forked from it reuses them (a child then builds its model in ~1 s)."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate

import medmvl.cli.train  # noqa: F401
import medmvl.data.datamodule  # noqa: F401
import medmvl.training.callbacks  # noqa: F401
import medmvl.training.module  # noqa: F401
from medmvl.models.llm import tokenizer
from tests.conftest import compose_train

_load = tokenizer.load_tokenizer
_cache: dict[str, Any] = {}


def _cached_load(*args: Any, **kwargs: Any) -> Any:
    key = repr((args, sorted(kwargs.items())))
    if key not in _cache:
        _cache[key] = _load(*args, **kwargs)
    return _cache[key]


tokenizer.load_tokenizer = _cached_load
instantiate(compose_train([]).llm.tokenizer)
