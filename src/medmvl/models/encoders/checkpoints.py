"""Read a vision tower out of a checkpoint folder without running the checkpoint's code.

Research towers (M3D-CLIP, MedM-CLIP-CT) ship as a ``config.json`` plus weights, with modelling code that
transformers would only import under ``trust_remote_code``. medmvl never imports that code and never
unpickles: it reads ``config.json`` as plain JSON and the tensors of one prefix (``vision_encoder.``) from
the folder's safetensors files, and the encoder class maps them onto its own modules.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
CONVERT_HINT = (
    "medmvl reads safetensors only (a pickle file can run code when loaded). Convert it once, e.g.\n"
    '  python -c "import torch, safetensors.torch as st; '
    "sd = torch.load('{file}', map_location='cpu', weights_only=True); "
    "st.save_file({{k: v.contiguous() for k, v in sd.items()}}, '{target}')\"\n"
    "(weights_only=True refuses anything but tensors), then point name_or_path at the folder again."
)


def resolve_checkpoint(name_or_path: str) -> Path:
    """A local checkpoint folder, or a hub id downloaded (config and safetensors only) when online."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file: give the checkpoint folder (config.json + *.safetensors)")
    parts = name_or_path.split("/")
    if len(parts) != 2 or name_or_path.startswith((".", "~")) or not all(parts):
        raise FileNotFoundError(
            f"checkpoint folder {path} does not exist (and it is not a hub id owner/name)"
        )
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors"])
    except Exception as err:  # offline, unknown repo, no network: say which and how to fix
        raise OSError(
            f"{name_or_path!r} is not a local folder and could not be fetched from the hub ({err}). "
            "Download it where you are online and pass the folder as name_or_path."
        ) from err
    return Path(folder)


def read_config(folder: Path) -> dict[str, Any]:
    """``folder/config.json`` as a plain dict (never imports the checkpoint's configuration class)."""
    file = folder / "config.json"
    if not file.exists():
        raise FileNotFoundError(f"{folder} has no config.json: it is not a checkpoint folder")
    return json.loads(file.read_text())


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: the shards of an index, ``model.safetensors``, or every file."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    if (folder / "model.safetensors").exists():
        return [folder / "model.safetensors"]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        first = pickles[0]
        raise FileNotFoundError(
            f"{folder} holds only pickle weights ({', '.join(p.name for p in pickles)}), no *.safetensors. "
            + CONVERT_HINT.format(file=first, target=first.with_suffix(".safetensors"))
        )
    raise FileNotFoundError(f"{folder} has no weights (*.safetensors)")


def read_tower_weights(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors under ``prefix`` (stripped) from the folder's safetensors; a file without any key under
    ``prefix`` is taken as the bare tower (e.g. M3D-CLIP's ``pretrained_ViT`` converted to safetensors)."""
    state: dict[str, torch.Tensor] = {}
    bare: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        with safe_open(str(file), framework="pt") as f:
            keys = list(f.keys())
            chosen = [k for k in keys if k.startswith(prefix)]
            for key in chosen:
                state[key[len(prefix) :]] = f.get_tensor(key)
            if not chosen:
                for key in keys:
                    bare[key] = f.get_tensor(key)
    if state:
        return state
    log.info("%s: no tensor under %r, reading the weights as a bare vision tower", folder, prefix)
    return bare
