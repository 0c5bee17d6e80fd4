"""Models in and out of medmvl: medmvl folders (``serialization``), HF Llava export (``llava``), MedM-VL
checkpoints (``medm_vl``) and the safetensors-only weight rule (``safe_weights``)."""
