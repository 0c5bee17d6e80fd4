"""3D ViT encoders for CT volumes: M3D-CLIP's vision tower (``m3d_clip``) and the from-scratch ``tiny3d``.

:class:`VolumeEncoder` is the shared body of every 3D ViT tower (checkpoint folder, layer and feature
selection, preprocessing, export); :class:`Vit3dEncoder` builds the tower with MONAI's
``monai.networks.nets.ViT`` (``spatial_dims=3``), the network M3D-CLIP was trained with.

Loading M3D-CLIP (``GoodBaiBai88/M3D-CLIP``) without ``trust_remote_code``: ``config.json`` is read as
JSON (``M3DCLIPConfig``: ``in_channels``, ``img_size``, ``patch_size``, ``hidden_size``, ``mlp_dim``,
``num_layers``, ``num_heads``, ``pos_embed`` = MONAI's ``proj_type``, ``dropout_rate``, ``spatial_dims``);
the tensors under ``vision_encoder.`` are read from the folder's safetensors (a file without that prefix,
e.g. ``pretrained_ViT`` converted from ``.bin``, is taken as the bare ViT). Key mapping onto
``Vit3dEncoder.tower`` (a MONAI ``ViT``; M3D's ViT is a copy of it built with ``classification=True``)::

    vision_encoder.cls_token                          -> tower.cls_token
    vision_encoder.patch_embedding.position_embeddings -> tower.patch_embedding.position_embeddings
    vision_encoder.patch_embedding.patch_embeddings.1.* -> tower.patch_embedding.patch_embeddings.1.*
    vision_encoder.blocks.{i}.{norm1,attn.qkv,attn.out_proj,norm2,mlp.linear1,mlp.linear2}.*
                                                      -> tower.blocks.{i}.<same>   (i <= selected layer)
    vision_encoder.blocks.{i > selected layer}.*      not built, not loaded (listed in the log)
    vision_encoder.norm.*, classification_head.*      not used: features are hidden states (pre-norm)
    vision_encoder.blocks.{i}.{norm_cross_attn,cross_attn}.*   MONAI >= 1.4 extras, never used; dropped
    language_encoder.*, mm_*_proj.*, logit_scale      the text side of the CLIP model; never read

Blocks after the selected layer, the final norm and MONAI's (unused) ``norm_cross_attn`` are not kept, so
every parameter of the encoder receives a gradient when it is trained (DDP with
``find_unused_parameters=false`` needs that) and ``state_dict`` holds only what the encoder computes with.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from medmvl.models.encoders.base import VisionEncoder
from medmvl.models.encoders.checkpoints import read_config, read_tower_weights, resolve_checkpoint

log = logging.getLogger(__name__)

# the architecture keys every 3D tower config has (plus tower-specific ones)
GEOMETRY_KEYS = ("in_channels", "img_size", "patch_size", "hidden_size", "mlp_dim", "num_layers", "num_heads")


class VolumeEncoder(VisionEncoder):
    """A 3D ViT used as a patch-token encoder: ``[b, c, d, h, w] -> [b, n, d_enc]``.

    Args:
        name_or_path: local folder (or hub id, when online) of a checkpoint in the tower's published
            layout; ``None`` builds the tower from ``config`` with random weights.
        config: architecture keys (``in_channels``, ``img_size`` (d, h, w), ``patch_size``, ``hidden_size``,
            ``mlp_dim``, ``num_layers``, ``num_heads`` + the tower's own); with ``name_or_path`` they
            override the checkpoint's ``config.json``.
        select_layer: index into the per-block hidden states (``-1``: last block, before any final norm,
            as MedM-VL reads them); blocks after it are not built.
        select_feature: ``patch`` or ``cls_patch`` (CLS token first).
        image_mean: per-channel mean applied after HU windowing to [0, 1]; ``None``: the family default.
        image_std: per-channel std, same rule.
        hu_window: (low, high) Hounsfield window mapped to [0, 1] by the data pipeline; ``None`` for
            volumes that are not CT.
        dtype: parameter dtype.
        attn_implementation: ``sdpa`` (fused attention) or ``eager``.
        medm_vl: ``{"family": "m3dclip" | "medmclip"}`` on towers imported from MedM-VL: the data
            pipeline then gives MedM-VL's volumes (``medmvl.interop.medm_vl.pixels``); ``None``: medmvl's.
    """

    default_mean: ClassVar[tuple[float, ...]] = (0.0,)
    default_std: ClassVar[tuple[float, ...]] = (1.0,)
    checkpoint_prefix: ClassVar[str] = "vision_encoder."
    layers_name: ClassVar[str]  # attribute of the tower holding its blocks ("blocks")
    unused_keys: ClassVar[tuple[str, ...]] = ()  # regexes of checkpoint keys never used

    def __init__(
        self,
        name_or_path: str | None = None,
        *,
        config: dict[str, Any] | None = None,
        select_layer: int = -1,
        select_feature: Literal["patch", "cls_patch"] = "patch",
        image_mean: tuple[float, ...] | None = None,
        image_std: tuple[float, ...] | None = None,
        hu_window: tuple[float, float] | None = (-1000.0, 1000.0),
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        medm_vl: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"{name}: select_feature must be 'patch' or 'cls_patch', got {select_feature!r}")
        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(
                f"{name}: attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}"
            )
        folder = resolve_checkpoint(name_or_path) if name_or_path else None
        arch = self.config_from_checkpoint(read_config(folder), folder) if folder else {}
        arch.update(dict(config or {}))
        if not arch:
            raise ValueError(f"{name}: give name_or_path or a config")
        self.arch = self.complete_config(arch)
        num_layers = self.arch["num_layers"]
        if not -num_layers <= select_layer < num_layers:
            raise ValueError(f"{name}: select_layer {select_layer} is outside a {num_layers}-layer tower")
        self.kept_layers = select_layer % num_layers + 1
        self.tower = self.build_tower(self.arch, self.kept_layers, attn_implementation)
        if select_feature == "cls_patch" and not self.has_cls:
            raise ValueError(f"{name} built without a CLS token: use select_feature='patch'")
        if folder is not None:
            self.load_checkpoint(folder)
        self.tower.to(getattr(torch, dtype))
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.attn_implementation = attn_implementation
        self.out_dim = self.arch["hidden_size"]
        self.spatial_dims = 3
        self.grid = tuple(s // p for s, p in zip(self.arch["img_size"], self.arch["patch_size"]))
        channels = self.arch["in_channels"]
        self.preprocess = {
            "volume_size": tuple(self.arch["img_size"]),
            "channels": channels,
            "image_mean": _per_channel(image_mean or self.default_mean, channels, "image_mean"),
            "image_std": _per_channel(image_std or self.default_std, channels, "image_std"),
            "hu_window": None if hu_window is None else tuple(float(v) for v in hu_window),
        }
        if medm_vl is not None:
            self.preprocess.update(mode="medm_vl", medm_vl=dict(medm_vl))

    # ---- what a tower family provides -------------------------------------------------------------
    has_cls: bool

    def config_from_checkpoint(self, raw: dict[str, Any], folder: Any) -> dict[str, Any]:  # pragma: no cover
        """Architecture keys from the checkpoint's ``config.json``."""
        raise NotImplementedError

    def complete_config(self, arch: dict[str, Any]) -> dict[str, Any]:
        """Validate the architecture keys and fill the tower's defaults."""
        missing = [k for k in GEOMETRY_KEYS if arch.get(k) is None]
        if missing:
            raise ValueError(f"{type(self).__name__}: config lacks {missing} (got {sorted(arch)})")
        arch["img_size"] = _triple(arch["img_size"], "img_size")
        arch["patch_size"] = _triple(arch["patch_size"], "patch_size")
        for size, patch in zip(arch["img_size"], arch["patch_size"]):
            if size % patch:
                raise ValueError(
                    f"img_size {arch['img_size']} is not divisible by patch_size {arch['patch_size']}"
                )
        return arch

    def build_tower(
        self, arch: dict[str, Any], layers: int, attn_implementation: str
    ) -> nn.Module:  # pragma: no cover
        """The tower with its first ``layers`` blocks; ``forward(pixels) -> [b, (1+)n, d_enc]``."""
        raise NotImplementedError

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[b, c, d, h, w]`` -> hidden state of the selected layer ``[b, (1+)n, d_enc]``."""
        return self.tower(pixels)

    # ---- shared ------------------------------------------------------------------------------------
    def map_checkpoint(self, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Checkpoint keys (prefix stripped) -> tower keys; returns (mapped, dropped keys)."""
        later = re.compile(rf"^{self.layers_name}\.(\d+)\.")
        unused = [re.compile(p) for p in self.unused_keys]
        mapped, dropped = {}, []
        for key, tensor in state.items():
            block = later.match(key)
            if (block and int(block.group(1)) >= self.kept_layers) or any(p.search(key) for p in unused):
                dropped.append(key)
            else:
                mapped[key] = tensor
        return mapped, dropped

    def load_checkpoint(self, folder: Any) -> None:
        """Load the tower's tensors from ``folder``; every kept parameter must be found, nothing else."""
        state = read_tower_weights(folder, self.checkpoint_prefix)
        mapped, dropped = self.map_checkpoint(state)
        what = (
            f"{folder}: the {self.checkpoint_prefix}* weights do not fit {type(self).__name__} ({self.arch})"
        )
        try:
            missing, unexpected = self.tower.load_state_dict(mapped, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise RuntimeError(f"{what}: {err}") from None
        if missing or unexpected:
            raise RuntimeError(f"{what}: missing {sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]}")
        if dropped:
            log.info("%s: %d checkpoint tensors not used: %s", folder, len(dropped), _summarise(dropped))

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid) + (1 if self.select_feature == "cls_patch" else 0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[b, c, d, h, w]`` -> ``[b, n, d_enc]`` (``[b, 1+n, d_enc]`` with ``cls_patch``)."""
        expected = (self.preprocess["channels"], *self.preprocess["volume_size"])
        if pixels.ndim != 5 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} takes volumes [b, c, d, h, w] with (c, d, h, w) = {expected}, "
                f"got {tuple(pixels.shape)}"
            )
        feats = self.encode(pixels.to(next(self.tower.parameters()).dtype))  # [b, (1+)n, d_enc]
        if self.has_cls and self.select_feature == "patch":
            feats = feats[:, 1:]  # [b, n, d_enc]
        return feats

    def export_config(self) -> dict[str, Any]:
        cls = type(self)
        return {
            "_target_": f"{cls.__module__}.{cls.__qualname__}",
            "name_or_path": None,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.arch.items()},
            "select_layer": self.select_layer,
            "select_feature": self.select_feature,
            "image_mean": list(self.preprocess["image_mean"]),
            "image_std": list(self.preprocess["image_std"]),
            "hu_window": None if self.preprocess["hu_window"] is None else list(self.preprocess["hu_window"]),
            "attn_implementation": self.attn_implementation,
            **({"medm_vl": dict(self.preprocess["medm_vl"])} if "medm_vl" in self.preprocess else {}),
        }


class Vit3dEncoder(VolumeEncoder):
    """MONAI ViT over volumes: M3D-CLIP's vision tower (``m3d_clip``) and ``tiny3d``.

    Tower config keys besides the geometry: ``proj_type`` (``perceptron`` as M3D-CLIP, or ``conv``),
    ``pos_embed_type`` (``learnable``), ``cls_token`` (M3D-CLIP: true), ``qkv_bias`` (false),
    ``dropout_rate`` (0). Input is a ``[0, 1]`` volume (mean 0, std 1), as M3D normalises CT.
    """

    layers_name = "blocks"
    unused_keys = (r"^norm\.", r"^classification_head\.", r"\.norm_cross_attn\.", r"\.cross_attn\.")

    def config_from_checkpoint(self, raw: dict[str, Any], folder: Any) -> dict[str, Any]:
        if raw.get("spatial_dims", 3) != 3:
            raise ValueError(f"{folder}/config.json: spatial_dims is {raw['spatial_dims']}, a 3D ViT needs 3")
        arch = {k: raw[k] for k in GEOMETRY_KEYS if k in raw}
        if len(arch) < len(GEOMETRY_KEYS):
            raise ValueError(
                f"{folder}/config.json (model_type {raw.get('model_type')!r}) is not an M3D-CLIP config: "
                f"it lacks {[k for k in GEOMETRY_KEYS if k not in raw]}"
            )
        arch["proj_type"] = raw.get("proj_type", raw.get("pos_embed", "perceptron"))
        arch["dropout_rate"] = raw.get("dropout_rate", 0.0)
        arch["cls_token"] = True  # M3DCLIP builds its ViT with classification=True
        return arch

    def complete_config(self, arch: dict[str, Any]) -> dict[str, Any]:
        arch = super().complete_config(arch)
        defaults = {
            "proj_type": "perceptron",
            "pos_embed_type": "learnable",
            "cls_token": True,
            "qkv_bias": False,
            "dropout_rate": 0.0,
        }
        unknown = set(arch) - set(GEOMETRY_KEYS) - set(defaults)
        if unknown:
            raise ValueError(f"Vit3dEncoder: unknown config keys {sorted(unknown)}")
        return {**defaults, **arch}

    @property
    def has_cls(self) -> bool:
        return bool(self.arch["cls_token"])

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        feats, _ = self.tower(pixels)  # [b, (1+)n, d_enc]: the last kept block (the final norm is Identity)
        return feats

    def build_tower(self, arch: dict[str, Any], layers: int, attn_implementation: str) -> nn.Module:
        from monai.networks.nets import ViT

        if attn_implementation == "sdpa" and arch["dropout_rate"]:
            raise ValueError(
                "Vit3dEncoder: attn_implementation='sdpa' needs dropout_rate 0 (MONAI applies it in eval)"
            )
        vit = ViT(
            in_channels=arch["in_channels"],
            img_size=arch["img_size"],
            patch_size=arch["patch_size"],
            hidden_size=arch["hidden_size"],
            mlp_dim=arch["mlp_dim"],
            num_layers=layers,
            num_heads=arch["num_heads"],
            proj_type=arch["proj_type"],
            pos_embed_type=arch["pos_embed_type"],
            classification=arch["cls_token"],  # MONAI's switch for the CLS token
            dropout_rate=arch["dropout_rate"],
            spatial_dims=3,
            qkv_bias=arch["qkv_bias"],
        )
        vit.norm = nn.Identity()  # features are hidden states, read before the final norm
        if hasattr(vit, "classification_head"):
            del vit.classification_head  # ViT.forward then returns the token sequence
        for block in vit.blocks:
            if not getattr(block, "with_cross_attention", False) and hasattr(block, "norm_cross_attn"):
                block.norm_cross_attn = nn.Identity()  # built by MONAI >= 1.4 even when unused
            block.attn.use_flash_attention = attn_implementation == "sdpa"
        return vit


def _summarise(keys: list[str]) -> str:
    """``blocks.11.attn.qkv.weight`` -> ``blocks.11.*``; ``norm.weight`` -> ``norm.*``."""
    heads = set()
    for key in keys:
        parts = key.split(".")
        heads.add(".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0])
    return ", ".join(f"{h}.*" for h in sorted(heads))


def _triple(value: Any, name: str) -> tuple[int, int, int]:
    values = (value,) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"{name} must be (d, h, w), got {value}")
    return values  # type: ignore[return-value]


def _per_channel(values: Any, channels: int, name: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1 and channels > 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"{name} has {len(values)} values for {channels} channels")
    return values
