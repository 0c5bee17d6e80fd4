"""Save and load a :class:`MedVLM` as a folder: architecture config, safetensors weights, tokenizer.

Layout::

    medmvl_config.json   encoder / connector / llm rebuild arguments (no hub access needed to rebuild)
    model.safetensors    every parameter and buffer of the MedVLM (shared tensors stored once)
    tokenizer/           the tokenizer with its chat template and image tokens
    preprocessor.json    what the data pipeline must feed the encoder (size, mean/std, channels; one entry
                         per placeholder when the model has a 2D and a 3D tower)
    adapters/<module>/   only for a model saved with PEFT LoRA kept (not merged): the PEFT adapter
                         (adapter_config.json + adapter_model.safetensors); model.safetensors then holds
                         the base weights without the adapters

Only safetensors are read or written; nothing is unpickled. A MedM-VL checkpoint folder (its own
``config.json`` layout) is read too: :func:`from_pretrained` hands it to :mod:`medmvl.interop.medm_vl`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from safetensors.torch import load_model, save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from medmvl.models.llm.loader import export_llm_config, load_llm
from medmvl.models.vlm import MedVLM

CONFIG_NAME = "medmvl_config.json"
WEIGHTS_NAME = "model.safetensors"
ADAPTER_DIR = "adapters"
COMPONENTS = ("encoder", "connector", "llm", "encoder3d", "connector3d")
SHARED = "shared"
"""``encoder3d.slice_encoder`` / ``connector3d`` value of a 3D tower made of the 2D tower's own modules."""
"""Top-level modules of a MedVLM that may exist (the 3D tower is optional)."""


def model_config(model: MedVLM, *, prompt: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-able ``medmvl_config.json`` content: how to rebuild ``model``'s architecture offline.

    Works on a model whose components are wrapped by PEFT (the wrapper forwards attribute access).
    """
    config: dict[str, Any] = {
        "format_version": 1,
        "encoder": model.encoder.export_config(),
        "connector": model.connector_config,
        "llm": export_llm_config(_unwrap(model.llm)),
    }
    if getattr(model, "encoder3d", None) is not None:
        config["encoder3d"] = model.encoder3d.export_config()
        if getattr(model.encoder3d, "slice_encoder", None) is _unwrap(model.encoder):
            config["encoder3d"]["slice_encoder"] = SHARED  # the 2D tower itself, run slice by slice
        config["connector3d"] = model.connector3d_config
    config["image_token_counts"] = model.image_token_counts
    config["prompt"] = dict(prompt or {})
    adapters = [name for name in COMPONENTS if _is_peft(getattr(model, name, None))]
    if adapters:
        config["adapters"] = {name: f"{ADAPTER_DIR}/{name}" for name in adapters}
    return json.loads(json.dumps(config, default=_jsonable))


def save_pretrained(model: MedVLM, out_dir: str | Path, *, prompt: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``out_dir`` (created); returns the folder.

    A component wrapped by PEFT LoRA is saved as its base weights (in ``model.safetensors``) plus the
    adapter (``adapters/<name>/``); merge first (:func:`medmvl.training.stages.merge_lora`) to save one
    set of plain weights.

    Every file gets the mode a new file gets (``0666 & ~umask``: ``0644`` under umask 022), the weights
    included (safetensors creates them ``0600``).

    Args:
        model: the model.
        out_dir: target folder.
        prompt: how prompts were built in training (``format``, ``system_prompt``, ``max_length``), so
            inference builds the same ones by default (see :func:`load_prompt_settings`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model_config(model, prompt=prompt)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    towers = getattr(model, "towers", {"<image>": ("encoder", "connector")})
    preprocess = {token: getattr(model, enc).preprocess for token, (enc, _) in towers.items()}
    if len(preprocess) == 1:  # one tower: its preprocessing itself
        preprocess = next(iter(preprocess.values()))
    (out / "preprocessor.json").write_text(json.dumps(preprocess, indent=2, default=_jsonable))
    save_file(_dedup(base_state_dict(model)), str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    for name, rel in config.get("adapters", {}).items():
        getattr(model, name).save_pretrained(str(out / rel), safe_serialization=True)
    model.tokenizer.save_pretrained(out / "tokenizer")
    _honour_umask([out / WEIGHTS_NAME, *(out / ADAPTER_DIR).rglob("*.safetensors")])
    return out


def build_from_config(
    config: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, *, dtype: str = "float32"
) -> MedVLM:
    """The architecture described by a ``medmvl_config.json`` dict, with fresh (untrained) weights."""
    parts: dict[str, Any] = {
        "encoder": instantiate(config["encoder"]),
        "connector": instantiate(config["connector"]),
        "llm": load_llm(tokenizer=tokenizer, dtype=dtype, **config["llm"]),
    }
    if config.get("encoder3d") is not None:
        tower3d = dict(config["encoder3d"])
        if tower3d.get("slice_encoder") == SHARED:  # the 2D tower's own module, run slice by slice
            rest = {k: v for k, v in tower3d.items() if k != "slice_encoder"}
            parts["encoder3d"] = instantiate(rest, _partial_=True)(slice_encoder=parts["encoder"])
        else:
            parts["encoder3d"] = instantiate(tower3d)
        shared = config["connector3d"] == SHARED
        parts["connector3d"] = SHARED if shared else instantiate(config["connector3d"])
    return MedVLM(**parts)


def from_pretrained(
    path: str | Path, *, dtype: str = "float32", map_location: str = "cpu", merge_adapters: bool = False
) -> MedVLM:
    """Rebuild a saved MedVLM offline and load its weights (strict: every key must match).

    Args:
        path: a folder written by :func:`save_pretrained`, or a MedM-VL checkpoint folder.
        dtype: parameter dtype.
        map_location: device the weights are loaded to.
        merge_adapters: fold saved LoRA adapters into the base weights (default: keep them as PEFT
            modules, which reproduces the saved model's logits bit for bit).
    """
    folder = Path(path)
    cfg_file = folder / CONFIG_NAME
    if not cfg_file.exists():
        from medmvl.interop.medm_vl import is_medmvl_checkpoint, load_medmvl

        if is_medmvl_checkpoint(folder):
            return load_medmvl(folder, dtype=dtype).to(map_location)
        raise FileNotFoundError(f"{folder} is not a saved medmvl model: {CONFIG_NAME} is missing")
    cfg = json.loads(cfg_file.read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    model = build_from_config(cfg, tokenizer, dtype=dtype)
    missing, unexpected = load_model(model, str(folder / WEIGHTS_NAME), strict=False, device=map_location)
    if missing or unexpected:
        raise RuntimeError(
            f"{folder / WEIGHTS_NAME} does not match the architecture in {CONFIG_NAME}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    for name, rel in (cfg.get("adapters") or {}).items():
        _attach_adapter(model, name, folder / rel, merge=merge_adapters)
    return model.to(getattr(torch, dtype)).eval()


def load_prompt_settings(path: str | Path) -> dict[str, Any]:
    """The prompt settings a saved model was trained with (empty for models saved without them)."""
    cfg_file = Path(path) / CONFIG_NAME
    if not cfg_file.exists():
        return {}
    return dict(json.loads(cfg_file.read_text()).get("prompt") or {})


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every PEFT LoRA component replaced by its base weights.

    Adapter tensors (``lora_*``) are left out and the wrapper prefixes (``base_model.model.``,
    ``.base_layer``) removed, so the keys are those of the unwrapped model.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        name, _, rest = key.partition(".")
        if _is_peft(getattr(model, name, None)):
            if "lora_" in rest:
                continue
            rest = rest.removeprefix("base_model.model.").replace(".base_layer.", ".")
        out[f"{name}.{rest}"] = value
    return out


def _attach_adapter(model: MedVLM, name: str, folder: Path, *, merge: bool) -> None:
    from peft import PeftModel

    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder}: the adapter of {name!r} named in {CONFIG_NAME} is missing")
    wrapped = PeftModel.from_pretrained(getattr(model, name), str(folder), is_trainable=False)
    setattr(model, name, wrapped.merge_and_unload() if merge else wrapped)


def _honour_umask(paths: list[Path]) -> None:
    """Give files written by safetensors (created ``0600``) the mode any new file gets: ``0666 & ~umask``."""
    mode = 0o666 & ~_umask()
    for path in paths:
        if path.is_file():
            os.chmod(path, mode)


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (the only portable way to read it)
    os.umask(mask)
    return mask


def _is_peft(module: Any) -> bool:
    if module is None:
        return False
    from peft import PeftModel

    return isinstance(module, PeftModel)


def _unwrap(module: nn.Module) -> nn.Module:
    return module.get_base_model() if _is_peft(module) else module


def _dedup(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep one name per shared storage (tied embeddings) and make the rest contiguous CPU tensors.

    ``load_model`` re-ties the dropped names from the model's own sharing, as ``save_model`` expects.
    """
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out: dict[str, torch.Tensor] = {}
    for key in sorted(tensors):
        t = tensors[key]
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and ident in seen:
            continue
        seen[ident] = key
        out[key] = t.detach().to("cpu").contiguous()
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    raise TypeError(f"cannot store {type(obj).__name__} in {CONFIG_NAME}")
