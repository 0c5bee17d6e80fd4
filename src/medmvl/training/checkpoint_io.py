"""Checkpoint files that survive a kill and never run code: atomic writes, ``weights_only=True`` loads.

:class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in the target's folder and renames
it into place (``os.replace``). Lightning's default writes through an fsspec transaction whose temporary
file lives in the system temp folder: when that is another filesystem (``/tmp`` on a local disk, outputs
on NFS/Lustre), the final move is a copy, and a kill during it leaves a truncated ``last.ckpt`` that
``ckpt_path=last`` would then pick. It also loads every checkpoint with ``torch.load(weights_only=True)``:
a checkpoint is data, and one carrying pickled code is refused.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

TMP_MARK = ".tmp-"


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds pickled objects beyond tensors and plain containers; it was not loaded."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local writes and ``weights_only=True`` loads.

    A local checkpoint is written to ``.<name>.tmp-<pid>`` next to its target, flushed to disk, and renamed
    over the target, so a reader sees the old file or the new one, never a prefix. Temporary files left by
    a killed writer are removed by the next successful write of the same target. Remote paths (``s3://``
    ...) keep Lightning's fsspec transaction.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or fsspec.utils.get_protocol(str(path)) not in ("file", "local"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(fsspec.utils.stringify_path(path)).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        for stale in target.parent.glob(f".{target.name}{TMP_MARK}*"):
            stale.unlink(missing_ok=True)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | Any = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load with ``weights_only=True`` (tensors, numbers, strings and containers only).

        Raises:
            ValueError: ``weights_only=False`` was asked for.
            UnsafeCheckpointError: The file holds other pickled objects (e.g. a code payload).
        """
        if weights_only is False:
            raise ValueError(
                f"{path}: medmvl loads checkpoints with weights_only=True only (a pickle can run code)"
            )
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0]
            raise UnsafeCheckpointError(
                f"refusing checkpoint {str(path)!r}: it holds pickled objects other than tensors and plain "
                f"containers, and medmvl loads checkpoints with torch.load(weights_only=True) ({first}). "
                "Only resume from checkpoints that medmvl wrote."
            ) from err


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
