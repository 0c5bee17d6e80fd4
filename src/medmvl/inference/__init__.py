"""Answer questions with a trained MedVLM: batched, left-padded generation (``Generator``)."""

from medmvl.inference.generate import Generator, as_sample, strip_images

__all__ = ["Generator", "as_sample", "strip_images"]
