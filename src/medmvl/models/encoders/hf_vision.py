"""Shared body of the transformers ViT towers (CLIP, SigLIP): load, select a layer, select features."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from transformers import PretrainedConfig, PreTrainedModel

from medmvl.interop.safe_weights import safetensors_only
from medmvl.models.encoders.base import VisionEncoder

log = logging.getLogger(__name__)


class HfVisionEncoder(VisionEncoder):
    """A transformers vision tower used as a patch-token encoder (2D).

    Args:
        name_or_path: hub id or local folder of a vision or full CLIP/SigLIP checkpoint; ``None`` builds
            the tower from ``config`` with random weights (offline, tiny tests, training from scratch).
        config: vision-config keyword arguments; used when ``name_or_path`` is None, else applied as
            overrides to the checkpoint's config.
        select_layer: index into the hidden states (``-1`` last layer, ``-2`` penultimate as in LLaVA/MedM-VL).
        select_feature: ``patch`` (patch tokens) or ``cls_patch`` (CLS token + patches; CLIP only).
        image_mean: per-channel mean; ``None`` takes the checkpoint's image processor or the family default.
        image_std: per-channel std, same rule.
        resample: the resize filter of the 8-bit image (a ``PILImageResampling`` name: ``bicubic``,
            ``bilinear``...); ``None`` takes the checkpoint's image processor, else ``bilinear`` (from-scratch
            towers, and saved models rebuilt from their config).
        rescale_factor: 8-bit -> float scale before the normalisation; ``None``: the checkpoint's, else 1/255.
        dtype: parameter dtype when loading (``float32``, ``bfloat16``...).
        attn_implementation: ``sdpa`` | ``eager`` | ``flash_attention_2``.
        medm_vl: MedM-VL's image-processor settings (``medmvl.interop.medm_vl.pixels``), set on models
            imported from MedM-VL: the data pipeline then gives MedM-VL's pixels (``preprocess["mode"]``
            ``medm_vl``); ``None``: medmvl's own preprocessing.
    """

    model_class: ClassVar[type[PreTrainedModel]]
    processor_class: ClassVar[str]  # the family's transformers image processor (its preprocessing)
    config_class: ClassVar[type[PretrainedConfig]]
    has_cls: ClassVar[bool]
    default_mean: ClassVar[tuple[float, float, float]]
    default_std: ClassVar[tuple[float, float, float]]

    def __init__(
        self,
        name_or_path: str | None = None,
        *,
        config: dict[str, Any] | None = None,
        select_layer: int = -2,
        select_feature: Literal["patch", "cls_patch"] = "patch",
        image_mean: tuple[float, ...] | None = None,
        image_std: tuple[float, ...] | None = None,
        resample: str | None = None,
        rescale_factor: float | None = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        medm_vl: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"select_feature must be 'patch' or 'cls_patch', got {select_feature!r}")
        if select_feature == "cls_patch" and not self.has_cls:
            raise ValueError(f"{type(self).__name__} has no CLS token: use select_feature='patch'")
        overrides = dict(config or {})
        if name_or_path is None:
            if not overrides:
                raise ValueError(f"{type(self).__name__}: give name_or_path or a config")
            cfg = self.config_class(**overrides)
            self.model = self.model_class._from_config(cfg, attn_implementation=attn_implementation)
            self.model.to(getattr(torch, dtype))
        else:
            try:
                self.model = self.model_class.from_pretrained(
                    name_or_path,
                    dtype=getattr(torch, dtype),
                    attn_implementation=attn_implementation,
                    **safetensors_only(name_or_path),
                    **overrides,
                )
            except OSError as err:
                if Path(name_or_path).expanduser().exists():  # a local folder's own problem: as it is
                    raise
                why = (str(err).strip().splitlines() or [type(err).__name__])[0]
                offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
                where = "the local hub cache (HF_HUB_OFFLINE=1)" if offline else "the hub"
                raise OSError(
                    f"{type(self).__name__}: {name_or_path!r} is not a local folder and could not be loaded "
                    f"from {where} ({why}); give name_or_path=<local folder> holding the checkpoint"
                ) from err
        vcfg = self.model.config
        stats = self._processor_settings(name_or_path)
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.out_dim = vcfg.hidden_size
        self.spatial_dims = 2
        side = vcfg.image_size // vcfg.patch_size
        self.grid = (side, side)
        self.preprocess = {
            "image_size": (vcfg.image_size, vcfg.image_size),
            "image_mean": tuple(image_mean or stats["mean"]),
            "image_std": tuple(image_std or stats["std"]),
            "channels": vcfg.num_channels,
        }
        if vcfg.num_channels == 3:  # the HF processor gives RGB; ImageTransform and the Llava export run it
            self.preprocess["hf_processor"] = {
                "class": self.processor_class,
                "resample": str(resample or stats["resample"]).lower(),
                "rescale_factor": float(rescale_factor or stats["rescale_factor"]),
            }
        if medm_vl is not None:
            self.preprocess.update(mode="medm_vl", medm_vl=dict(medm_vl))

    def _processor_settings(self, name_or_path: str | None) -> dict[str, Any]:
        """Mean, std, resample and rescale factor of the checkpoint's image processor, else the defaults."""
        defaults = {
            "mean": self.default_mean,
            "std": self.default_std,
            "resample": "bilinear",  # medmvl's resize for towers without a processor of their own
            "rescale_factor": 1 / 255,
        }
        if name_or_path is None:
            return defaults
        try:
            from transformers import AutoImageProcessor
            from transformers.image_utils import PILImageResampling

            proc = AutoImageProcessor.from_pretrained(name_or_path)
            resample = getattr(proc, "resample", None)
            return {
                "mean": tuple(proc.image_mean),
                "std": tuple(proc.image_std),
                "resample": PILImageResampling(int(resample)).name if resample is not None else "bilinear",
                "rescale_factor": float(proc.rescale_factor) if getattr(proc, "do_rescale", True) else 1.0,
            }
        except (OSError, ValueError) as err:
            log.warning(
                "no image processor config for %s (%s): using %s defaults",
                name_or_path,
                err,
                type(self).__name__,
            )
            return defaults

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + (1 if self.select_feature == "cls_patch" else 0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[b, c, h, w]`` -> ``[b, n, d_enc]``."""
        out = self.model(pixel_values=pixels.to(self.model.dtype), output_hidden_states=True)
        feats = out.hidden_states[self.select_layer]  # [b, (1+)n, d_enc]
        if self.has_cls and self.select_feature == "patch":
            feats = feats[:, 1:]  # [b, n, d_enc]
        return feats

    def export_config(self) -> dict[str, Any]:
        cls = type(self)
        out = {
            "_target_": f"{cls.__module__}.{cls.__qualname__}",
            "name_or_path": None,
            "config": self.model.config.to_diff_dict(),
            "select_layer": self.select_layer,
            "select_feature": self.select_feature,
            "image_mean": list(self.preprocess["image_mean"]),
            "image_std": list(self.preprocess["image_std"]),
        }
        hf = self.preprocess.get("hf_processor")
        if hf is not None:  # the checkpoint's resize settings survive a rebuild without the checkpoint
            out.update(resample=hf["resample"], rescale_factor=hf["rescale_factor"])
        if "medm_vl" in self.preprocess:
            out["medm_vl"] = dict(self.preprocess["medm_vl"])
        return out
