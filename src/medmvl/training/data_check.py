"""Check the training data before any weights load: schema, media paths and token lengths.

``train.py`` builds the tokenizer first (its own config node, ``llm.tokenizer``) and runs
:func:`check_data` on every annotation file of a ``data`` node that names them (``data.annotations``,
``data.val_annotations``), so a missing image or a sample too long for ``data.max_length`` stops the run in
seconds instead of after the encoder and the LLM are built. Each ``<image>`` / ``<image3d>`` placeholder
counts as one token here: the model's image token counts are known once its towers are built, and the data
module checks the full lengths then (with the same messages). Under ``data.on_error=skip`` nothing is
checked here: the data module drops and reports bad samples.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medmvl.data.conversation import ConversationEncoder, SampleTooLongError
from medmvl.data.media import check_media
from medmvl.data.schema import PLACEHOLDERS, AnnotationError, Problem, read_annotations

_IMAGE_TOKENS = re.compile(r"\(\d+ image tokens\)")


def check_data(data: Mapping[str, Any], tokenizer: Any) -> None:
    """Raise :class:`~medmvl.data.schema.AnnotationError` listing the problems of the first annotation file
    that has any (``err.problems``: every one, each naming file, sample index, id, field and reason).

    Args:
        data: the ``data`` config node of a ``MedVLDataModule`` (``annotations``, ``val_annotations``,
            ``image_dir``, ``image3d_dir``, ``max_length``, ``format``, ``system_prompt``, ``on_error``).
        tokenizer: the run's tokenizer (``llm.tokenizer``, built).
    """
    if data.get("on_error", "raise") != "raise" or not data.get("annotations"):
        return
    conversation = ConversationEncoder(
        tokenizer,
        image_token_counts={p.token: 1 for p in PLACEHOLDERS},
        max_length=int(data.get("max_length") or 2048),
        format=data.get("format") or "chat",
        system_prompt=data.get("system_prompt"),
    )
    for key in ("annotations", "val_annotations"):
        if data.get(key):
            _check_file(str(data[key]), data, conversation)


def _check_file(path: str, data: Mapping[str, Any], conversation: ConversationEncoder) -> None:
    samples, problems = read_annotations(path)  # an unreadable file raises AnnotationError itself
    folder = Path(path).parent
    problems = [p for p in problems if p.severity == "error"]
    problems += check_media(
        samples,
        image_dir=data.get("image_dir") or folder,
        image3d_dir=data.get("image3d_dir") or folder,
        read=False,  # decoding every file is medmvl-data check --images; paths are checked here
    )
    failed = {p.index for p in problems}
    for sample in samples:
        if sample.index in failed:
            continue
        try:
            conversation.encode(sample)
        except AnnotationError as err:
            message = str(err).removeprefix(f"{sample.where()}: ")
            if isinstance(err, SampleTooLongError):  # the placeholders counted one token each
                message = _IMAGE_TOKENS.sub("(each image counted as one token so far)", message)
            code = "too_long" if isinstance(err, SampleTooLongError) else getattr(err, "code", "encode")
            problems.append(Problem(path, sample.index, sample.id, "conversations", message, code))
    if problems:
        problems.sort(key=lambda p: -1 if p.index is None else p.index)
        more = f" ({len(problems) - 1} more problem(s) in this file)" if len(problems) > 1 else ""
        raise AnnotationError(f"{problems[0]}{more}", problems)
