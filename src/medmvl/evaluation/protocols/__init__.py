"""Scoring protocols: reference scorers' definitions, reproduced with their quirks (docs/protocols.md).

``python evaluate.py protocol=<name>`` picks one (``conf/protocol/<name>.yaml``, instantiated by
``_target_``); ``medmvl`` (the default) is medmvl's own strict scoring and changes nothing.
"""

from medmvl.evaluation.protocols.base import Protocol, Reference

__all__ = ["Protocol", "Reference"]
