"""Weights are read from safetensors only: the check and keyword every transformers ``from_pretrained`` uses.

A ``pytorch_model.bin`` / ``.pt`` is a pickle, and unpickling can run any code the file's author chose.
transformers falls back to such files when a folder or hub repo has no safetensors; medmvl asks for
``use_safetensors=True`` (transformers then refuses a pickle-only hub repo) and refuses a local pickle-only
folder itself, with the one-line conversion to run where the file is trusted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medmvl.models.encoders.checkpoints import CONVERT_HINT, PICKLE_SUFFIXES


class PickleWeightsError(FileNotFoundError):
    """A weights source offers only pickle files (``.bin``, ``.pt``, ...), which medmvl does not load."""


def safetensors_only(name_or_path: str) -> dict[str, Any]:
    """Check a local ``name_or_path`` and return the ``from_pretrained`` keywords that forbid pickles.

    Raises:
        PickleWeightsError: A local folder with pickle weights and no ``*.safetensors``, or a pickle file.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        raise PickleWeightsError(
            f"{path} is a pickle file; give a folder with *.safetensors. "
            + CONVERT_HINT.format(file=path, target=path.with_suffix(".safetensors"))
        )
    if path.is_dir() and not any(path.glob("*.safetensors")):
        pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise PickleWeightsError(
                f"{path} holds only pickle weights ({', '.join(p.name for p in pickles)}), no *.safetensors. "
                + CONVERT_HINT.format(file=pickles[0], target=path / "model.safetensors")
            )
    return {"use_safetensors": True}
