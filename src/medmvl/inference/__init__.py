"""Answer questions with a trained MedVLM: batched, left-padded generation (``Generator``) and whole
inference files (``batch``); the Gradio app and its upload handling live in :mod:`medmvl.apps`."""

from medmvl.inference.generator import Generator, as_sample, strip_images

__all__ = ["Generator", "as_sample", "strip_images"]
