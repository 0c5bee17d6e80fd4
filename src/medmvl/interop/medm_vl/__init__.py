"""MedM-VL interop: its checkpoints (both config schemas, both key layouts), its prompt and its pixels.

:mod:`.config` builds the MedVLM of a checkpoint folder, :mod:`.weights` maps its state dict,
:mod:`.prompt` renders and tokenizes MedM-VL's prompt (``format: medm_vl``), :mod:`.pixels` reproduces its
image-processor and CT paths (``preprocess`` mode ``medm_vl``).
"""

from medmvl.interop.medm_vl.config import (
    is_medmvl_checkpoint,
    load_medmvl,
    medmvl_prompt_settings,
    read_medmvl_config,
)
from medmvl.interop.medm_vl.weights import MedmvlImportError

__all__ = [
    "MedmvlImportError",
    "is_medmvl_checkpoint",
    "load_medmvl",
    "medmvl_prompt_settings",
    "read_medmvl_config",
]
