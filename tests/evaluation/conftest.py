"""Reuse the inference fixtures (a talkative tiny model, small PNGs)."""

from tests.inference.conftest import image_dir, saved_model, talkative_model  # noqa: F401
