"""MedM-CLIP-CT's 3D vision tower (``shiym2000/MedM-CLIP-CT``, MedM-VL's ``medmclip`` encoder).

MedM-CLIP-CT is **not** a MONAI ViT: MedM-VL (``lvlm/model/encoder/medmclip.py``) builds a vit-pytorch
style 3D ViT — patches flattened as ``(p1 p2 pf c)``, LayerNorm -> Linear -> LayerNorm patch embedding,
a learned position embedding that covers the CLS token, and ``torch.nn.TransformerEncoderLayer`` blocks
(post-norm, ReLU, batch-first). Loading its weights into a MONAI ViT would run but compute something
else, so this file rebuilds that layout from torch's own layers (and einops, as MONAI does).

Loading without ``trust_remote_code``: ``config.json`` (``MedMCLIPConfig``, model_type ``medm-pretrain``)
gives ``frame_size`` x ``image_size``² volumes, ``frame_patch_size`` x ``image_patch_size``² patches,
``hidden_size``, ``image_num_layers``, ``image_num_heads``, ``image_mlp_dim`` (1 input channel, dropout 0,
as MedMCLIP builds its ViT). Key mapping from the CLIP checkpoint onto ``MedMClipEncoder.tower``::

    vision_encoder.to_patch_embedding.{1,2,3}.*      -> tower.to_patch_embedding.{1,2,3}.*  (LN, Linear, LN)
    vision_encoder.pos_embedding, .cls_token         -> tower.pos_embedding, tower.cls_token
    vision_encoder.transformer_layers.{i}.{self_attn.in_proj_*,self_attn.out_proj.*,linear1,linear2,norm1,norm2}
                                                     -> tower.transformer_layers.{i}.<same>  (i <= selected)
    vision_encoder.transformer_layers.{i > selected}.*   not built, not loaded
    vision_encoder.mlp_head.*                        the CLIP head; not used
    text_encoder.*, logit_scale                      the text side; never read

Preprocessing: MedM-VL standardises 8-bit CT-RATE volumes with mean 55.698 and std 66.194; on medmvl's
[0, 1] windowed volumes that is mean 55.698/255 and std 66.194/255 (the defaults here). Unlike MedM-VL,
whose hidden states are ``detach()``-ed (so ``tune_type_encoder_image3d=full`` never trains the tower),
gradients flow when the encoder is trained.
"""

from __future__ import annotations

from typing import Any

import torch
from einops.layers.torch import Rearrange
from torch import nn

from medmvl.models.encoders.vit3d import GEOMETRY_KEYS, VolumeEncoder

# MedM-VL's Image3DProcessor statistics of 8-bit CT-RATE volumes, rescaled to [0, 1] inputs
MEDM_MEAN = 55.6982188356434 / 255.0
MEDM_STD = 66.1943479570918 / 255.0


class MedMClipTower(nn.Module):
    """MedM-CLIP-CT's ViT without its CLIP head: ``[b, c, d, h, w] -> [b, 1+n, d_enc]`` (last block)."""

    def __init__(
        self,
        *,
        in_channels: int,
        img_size: tuple[int, int, int],
        patch_size: tuple[int, int, int],
        hidden_size: int,
        mlp_dim: int,
        num_layers: int,
        num_heads: int,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        pd, ph, pw = patch_size
        num_patches = (img_size[0] // pd) * (img_size[1] // ph) * (img_size[2] // pw)
        patch_dim = in_channels * pd * ph * pw
        self.to_patch_embedding = nn.Sequential(
            Rearrange("b c (f pf) (h p1) (w p2) -> b (f h w) (p1 p2 pf c)", pf=pd, p1=ph, p2=pw),
            nn.LayerNorm(patch_dim),
            nn.Linear(patch_dim, hidden_size),
            nn.LayerNorm(hidden_size),
        )
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, hidden_size))
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden_size))
        self.transformer_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=hidden_size,
                nhead=num_heads,
                dim_feedforward=mlp_dim,
                dropout=dropout_rate,
                batch_first=True,
            )
            for _ in range(num_layers)
        )

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        x = self.to_patch_embedding(volume)  # [b, n, d_enc]
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # [b, 1, d_enc]
        x = torch.cat((cls, x), dim=1) + self.pos_embedding  # [b, 1+n, d_enc]
        for layer in self.transformer_layers:
            x = layer(x)
        return x


class MedMClipEncoder(VolumeEncoder):
    """MedM-CLIP-CT's vision tower (``medm_clip``); arguments as :class:`VolumeEncoder`.

    Config keys: the geometry keys (``in_channels``, ``img_size``, ``patch_size``, ``hidden_size``,
    ``mlp_dim``, ``num_layers``, ``num_heads``) and ``dropout_rate``. ``attn_implementation`` is accepted
    for a uniform interface; torch's encoder layer picks its fused kernels itself.
    """

    default_mean = (MEDM_MEAN,)
    default_std = (MEDM_STD,)
    layers_name = "transformer_layers"
    unused_keys = (r"^mlp_head\.",)
    has_cls = True

    def config_from_checkpoint(self, raw: dict[str, Any], folder: Any) -> dict[str, Any]:
        fields = ("frame_size", "image_size", "frame_patch_size", "image_patch_size", "hidden_size",
                  "image_num_layers", "image_num_heads", "image_mlp_dim")  # fmt: skip
        missing = [f for f in fields if f not in raw]
        if missing:
            raise ValueError(
                f"{folder}/config.json (model_type {raw.get('model_type')!r}) is not a MedM-CLIP config: it "
                f"lacks {missing}; pass the architecture in the encoder's `config` to override"
            )
        image, patch = raw["image_size"], raw["image_patch_size"]
        return {
            "in_channels": 1,
            # MedM-VL rewrites image_size/patch_size to [d, h, w] lists in its own saved configs
            "img_size": image if isinstance(image, list) else [raw["frame_size"], image, image],
            "patch_size": patch if isinstance(patch, list) else [raw["frame_patch_size"], patch, patch],
            "hidden_size": raw["hidden_size"],
            "mlp_dim": raw["image_mlp_dim"],
            "num_layers": raw["image_num_layers"],
            "num_heads": raw["image_num_heads"],
            "dropout_rate": 0.0,  # MedMCLIP's ViT is built with its default dropout 0
        }

    def complete_config(self, arch: dict[str, Any]) -> dict[str, Any]:
        arch = super().complete_config(arch)
        unknown = set(arch) - set(GEOMETRY_KEYS) - {"dropout_rate"}
        if unknown:
            raise ValueError(f"MedMClipEncoder: unknown config keys {sorted(unknown)}")
        return {"dropout_rate": 0.0, **arch}

    def build_tower(self, arch: dict[str, Any], layers: int, attn_implementation: str) -> nn.Module:
        return MedMClipTower(**{**arch, "num_layers": layers})
