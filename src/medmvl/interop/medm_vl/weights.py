"""MedM-VL state-dict names -> medmvl names, for every tower layout MedM-VL writes.

MedM-VL saves its modules as ``llm.*``, ``encoder_image.encoder.*`` (the transformers vision model),
``encoder_image3d.encoder.*`` (the 3D CLIP), ``connector_image(3d).*``. What follows ``encoder_image.encoder.``
depends on the transformers version that saved it: 4.x ``SiglipVisionModel`` / ``CLIPVisionModel`` hold
their tower as ``vision_model.*`` (MedM-VL's pinned 4.42.4 writes ``vision_model.embeddings...``), 5.x hold
``embeddings.*``, ``encoder.*`` directly. Both are read: each key is matched against the built tower's own
names, with and without ``vision_model.``. The 3D towers (M3D-CLIP's ``vision_encoder.*`` ViT, MedM-CLIP's
``vision_encoder.*`` ViT; the CLIP text side is not used) go through the medmvl encoder's own
``map_checkpoint``. A key that matches nothing is an error naming the first such keys.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import safe_open

from medmvl.models.connectors.mlp import MlpConnector
from medmvl.models.connectors.pooling import AttnPoolConnector
from medmvl.models.encoders.checkpoints import weight_files
from medmvl.models.vlm import MedVLM

log = logging.getLogger(__name__)

TOWER_3D = "encoder_image3d.encoder.vision_encoder."
VISION_2D = "encoder_image.encoder."
HF_LAYOUTS = ("", "vision_model.")
"""Prefixes a 2D tower key may carry after ``encoder_image.encoder.`` (5.x, 4.x transformers)."""


class MedmvlImportError(ValueError):
    """A MedM-VL checkpoint medmvl cannot read exactly; the message names the field and the reason."""


def load_weights(model: MedVLM, folder: Path, names: dict[str, tuple[str, str]]) -> None:
    """Load every tensor of the checkpoint in ``folder`` into ``model`` (strict, both key layouts).

    Args:
        model: the built MedVLM.
        folder: the MedM-VL folder (its safetensors files).
        names: MedM-VL role (``image``, ``image3d``) -> (encoder attribute, connector attribute) in ``model``.

    Raises:
        MedmvlImportError: keys of an unknown layout, or weights that do not fit the architecture.
    """
    expected = set(model.state_dict())
    state: dict[str, torch.Tensor] = {}
    tower3d: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for file in weight_files(folder):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                target = rename(key, model, names, expected)
                if target == "3d":
                    tower3d[key.removeprefix(TOWER_3D)] = f.get_tensor(key)
                elif target == "ignore":
                    ignored.append(key)
                elif target is None:
                    unknown.append(key)
                else:
                    state[target] = f.get_tensor(key)
    if unknown:
        raise MedmvlImportError(
            f"{folder}: MedM-VL weights of an unknown layout: {sorted(unknown)[:8]} "
            f"({len(unknown)} keys); medmvl reads llm.*, {VISION_2D}[vision_model.]* (transformers 4.x or "
            f"5.x), {TOWER_3D}*, connector_image(3d).*"
        )
    if tower3d:
        encoder_name = names["image3d"][0]
        mapped, dropped = getattr(model, encoder_name).map_checkpoint(tower3d)
        state.update({f"{encoder_name}.tower.{k}": v for k, v in mapped.items()})
        ignored += [f"{TOWER_3D}{k}" for k in dropped]
    fit_vocabulary(model, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _aliases(model, state)]
    if missing or unexpected:
        raise MedmvlImportError(
            f"{folder}: the weights do not fit the architecture in config.json: missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}"
        )
    if ignored:
        log.info("%s: %d MedM-VL tensors not used (CLIP text side): %s", folder, len(ignored), ignored[:4])


def _aliases(model: MedVLM, loaded: dict[str, torch.Tensor]) -> set[str]:
    """Names of tensors that share storage with a loaded one (tied embeddings, a tower serving 2D and 3D)."""
    state = model.state_dict(keep_vars=True)
    loaded_ptrs = {state[k].data_ptr() for k in loaded if k in state}
    return {k for k, v in state.items() if v.data_ptr() in loaded_ptrs and k not in loaded}


def fit_vocabulary(model: MedVLM, state: dict[str, torch.Tensor]) -> None:
    """Pad the checkpoint's embedding rows when medmvl's image tokens grew the vocabulary past them.

    The new rows (``<image>``, ``<image3d>``) are the mean of the trained rows (HF's ``mean_resizing``):
    their input embedding is never used (features replace it), their output logit stays ordinary.
    """
    current = model.state_dict()
    for key in [k for k in state if k.startswith("llm.")]:
        have, want = state[key], current.get(key)
        if (
            want is None
            or have.ndim != 2
            or have.shape[1:] != want.shape[1:]
            or have.shape[0] >= want.shape[0]
        ):
            continue
        extra = have.float().mean(0, keepdim=True).to(have.dtype).expand(want.shape[0] - have.shape[0], -1)
        state[key] = torch.cat([have, extra])  # [v_model, d]
        log.info("%s: %d rows added for medmvl's image tokens", key, want.shape[0] - have.shape[0])


def rename(key: str, model: MedVLM, names: dict[str, tuple[str, str]], expected: set[str]) -> str | None:
    """The medmvl name of a MedM-VL tensor; ``"3d"`` for a 3D tower tensor, ``"ignore"``, or ``None``."""
    if key.startswith("llm."):
        return key
    if key.startswith(VISION_2D) and "image" in names:
        rest = key.removeprefix(VISION_2D)
        base = f"{names['image'][0]}.model."
        for layout in HF_LAYOUTS:  # 5.x names first, then 4.x's vision_model.* wrapper
            if rest.startswith(layout) and base + rest.removeprefix(layout) in expected:
                return base + rest.removeprefix(layout)
        return None
    if key.startswith("encoder_image3d.encoder.") and "image3d" in names:
        return "3d" if key.startswith(TOWER_3D) else "ignore"
    for role in ("image", "image3d"):
        prefix = f"connector_{role}."
        if not key.startswith(prefix) or role not in names:
            continue
        connector_name = names[role][1]
        rest = key.removeprefix(prefix)
        connector = getattr(model, connector_name)
        if rest.startswith("connector."):
            mlp = "proj." if isinstance(connector, MlpConnector) else "mlp.proj."
            return f"{connector_name}.{mlp}{rest.removeprefix('connector.')}"
        if isinstance(connector, AttnPoolConnector) and (rest == "query" or rest.startswith("attn.")):
            return f"{connector_name}.{rest}"
    return None
