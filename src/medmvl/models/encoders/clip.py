"""CLIP vision tower (``openai/clip-vit-*``, BiomedCLIP-style ViTs in the CLIP layout)."""

from transformers import CLIPVisionConfig, CLIPVisionModel

from medmvl.models.encoders.hf_vision import HfVisionEncoder


class ClipEncoder(HfVisionEncoder):
    """CLIP ViT; hidden states carry a CLS token first, dropped unless ``select_feature='cls_patch'``."""

    model_class = CLIPVisionModel
    config_class = CLIPVisionConfig
    processor_class = "CLIPImageProcessor"
    has_cls = True
    default_mean = (0.48145466, 0.4578275, 0.40821073)
    default_std = (0.26862954, 0.26130258, 0.27577711)
