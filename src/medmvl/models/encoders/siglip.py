"""SigLIP vision tower (``google/siglip-*``; MedM-VL's 2D encoder). Also the from-scratch ``tiny2d``."""

from transformers import SiglipVisionConfig, SiglipVisionModel

from medmvl.models.encoders.hf_vision import HfVisionEncoder


class SiglipEncoder(HfVisionEncoder):
    """SigLIP ViT: patch tokens only (no CLS token), images normalised to [-1, 1] by default."""

    model_class = SiglipVisionModel
    config_class = SiglipVisionConfig
    processor_class = "SiglipImageProcessor"
    has_cls = False
    default_mean = (0.5, 0.5, 0.5)
    default_std = (0.5, 0.5, 0.5)
