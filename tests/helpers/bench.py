"""``experiments/bench/`` scripts imported as modules by the tests that check them."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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


def run_script(script: str, args: list[str], results: Path, timeout: int) -> subprocess.CompletedProcess:
    """``experiments/bench/<script>`` with ``args`` in a subprocess, offline, its JSON results in ``results``;
    fails the test with the end of its stderr unless it exits 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MEDMVL_BENCH_RESULTS": str(results)}
    cmd = [sys.executable, str(BENCH / script), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return out
