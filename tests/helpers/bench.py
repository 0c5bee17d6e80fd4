"""``experiments/bench/`` scripts imported as modules by the tests that check them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from tests.conftest import ROOT

BENCH = ROOT / "experiments" / "bench"
# the scripts import their siblings by plain name; forgotten after each use
SIBLINGS = ("common", "train_speed", "real_shapes", "ct_batch", "gpu_scale")


@contextmanager
def bench_module(name: str) -> Iterator[ModuleType]:
    """``experiments/bench/<name>.py`` as a module, its folder on ``sys.path`` while it is in use."""
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
        for sibling in {name, *SIBLINGS}:
            sys.modules.pop(sibling, None)
