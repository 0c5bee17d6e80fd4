"""Answer questions with a trained MedVLM: batched, left-padded generation (``Generator``), whole
inference files (``batch``), uploaded scans (``scans``) and the Gradio demo (``demo_app``)."""

from medmvl.inference.generator import Generator, as_sample, strip_images

__all__ = ["Generator", "as_sample", "strip_images"]
