"""The build folder of a demo builder: reuse a finished build, else write a new one aside and swap it in.

Why: the 2D and 3D demo builders cache their output in a folder named by the caller (``<cache>/demo_2d``,
``<cache>/demo_3d``) and must never leave it half written, nor overwrite a folder that is not theirs.
A build is identified by its ``meta.json`` (``builder``, ``version``, ``params``); it is written into a
temporary sibling and moved into place with ``os.replace``, so a crash or a concurrent build leaves either
the old folder or a complete new one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def read_meta(folder: Path, builder: str) -> dict[str, Any] | None:
    """``folder/meta.json`` when it is a JSON object written by ``builder``, else ``None``."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("builder") == builder else None


def is_complete(
    folder: Path, *, builder: str, version: int, params: dict[str, Any], files: Sequence[str]
) -> bool:
    """True when ``folder`` holds a finished build of ``builder`` at ``version`` with ``params``: its
    ``meta.json`` says so and every one of ``files`` (names relative to ``folder``) is there."""
    meta = read_meta(folder, builder)
    if meta is None or meta.get("version") != version or meta.get("params") != params:
        return False
    return all((folder / f).is_file() for f in files)


def build_folder(
    out: Path,
    write: Callable[[Path, dict[str, Any]], None],
    *,
    builder: str,
    version: int,
    params: dict[str, Any],
    files: Sequence[str],
    kind: str,
    force: bool = False,
) -> Path:
    """Return ``out`` holding the build of ``params``: reused when complete, else written by ``write``.

    Args:
        out: the build folder.
        write: ``write(tmp, params)`` fills the empty folder ``tmp`` with the whole build, ``meta.json``
            (``builder``, ``version``, ``params``) included.
        builder, version, params: what ``out/meta.json`` must say for ``out`` to be reused.
        files: names inside ``out`` that a finished build holds besides ``meta.json``.
        kind: what the builder builds, for the error message (``"demo build"``).
        force: rebuild even when ``out`` already holds this build.

    Returns:
        ``out``.

    Raises:
        FileExistsError: ``out`` exists, is not empty and its ``meta.json`` is not from ``builder``.
    """
    ident = {"builder": builder, "version": version, "params": params, "files": files}
    if not force and is_complete(out, **ident):
        return out
    if out.exists() and any(out.iterdir()) and read_meta(out, builder) is None:
        raise FileExistsError(f"{out} is not empty and holds no {kind} (meta.json); refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp, params)
        if out.exists():
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:
            if not is_complete(out, **ident):  # else another process finished the same build first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
