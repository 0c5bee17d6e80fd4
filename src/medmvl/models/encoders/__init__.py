"""Vision encoders. Each family is one file; all implement :class:`~medmvl.models.encoders.base.VisionEncoder`."""

from medmvl.models.encoders.base import VisionEncoder

__all__ = ["VisionEncoder"]
