"""Turn a conversation into ``input_ids`` and ``labels`` with the LLM's own chat template.

Why prefix by prefix: the prompt a model sees at inference is ``apply_chat_template(...,
add_generation_prompt=True)``. Rendering every prefix that ends before an answer that way, checking each
rendering is a string prefix of the next, and tokenizing the renderings makes every training prompt
token-identical to its inference prompt and puts each answer boundary exactly where the generation prompt
ends (no per-family regexes as in TinyLLaVA's templates). Where a tokenizer merges tokens across a boundary,
only the text increment is tokenized, so the boundary stays exact. Each answer is supervised up to and
including its end-of-turn token (``tokenizer.eos_token``, see ``medmvl.models.llm.tokenizer``); whatever the
template adds after it (a newline, the next user turn) is not.

Image placeholders (``<image>``, ``<image3d>``) are single tokens that are expanded here to the number of
tokens the connector produces, so truncation can see them and the model merges features by placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from medmvl.data.schema import IMAGE3D_TOKEN, IMAGE_TOKEN, AnnotationError, Sample, Turn

IGNORE_INDEX = -100
FORMATS = ("chat", "plain", "medm_vl")
_ROLES = {"human": "user", "gpt": "assistant"}


class SampleTooLongError(AnnotationError):
    """A sample does not fit ``max_length`` without cutting image tokens or every supervised token."""


class ConversationEncoder:
    """Encode samples for training (``encode``) and prompts for generation (``encode_prompt``).

    Args:
        tokenizer: A tokenizer from ``load_tokenizer`` (chat template, eos = end-of-turn, image tokens).
        image_token_counts: Placeholder token -> number of copies it expands to, e.g. ``{"<image>": 64}``.
        max_length: Longest sequence, image tokens included.
        format: ``chat`` (the tokenizer's chat template), ``plain`` (pre-training: the human turn's image
            placeholders, then the caption and eos; only caption and eos are supervised) or ``medm_vl``
            (MedM-VL's prompt rendered and tokenized as MedM-VL does, for imported MedM-VL models:
            :mod:`medmvl.interop.medm_vl.prompt`).
        system_prompt: Optional system message for ``chat`` (``None`` lets the template decide, e.g. Qwen's
            default system prompt).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        image_token_counts: Mapping[str, int],
        max_length: int,
        format: Literal["chat", "plain", "medm_vl"] = "chat",
        system_prompt: str | None = None,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos (end-of-turn) token")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.format = format
        self.system_prompt = system_prompt
        self.expand: dict[int, int] = {}
        for token, count in image_token_counts.items():
            ids = tokenizer.encode(token, add_special_tokens=False)
            if len(ids) != 1 or count < 1:
                raise ValueError(
                    f"image token {token!r} must be one token with count >= 1; got ids {ids}, "
                    f"count {count} (load the tokenizer with image_tokens including it)"
                )
            self.expand[ids[0]] = count
        vocab = tokenizer.get_vocab()
        known = {vocab[t] for t in (IMAGE_TOKEN, IMAGE3D_TOKEN) if t in vocab}
        self.placeholder_ids = known | set(self.expand)  # ids that must never reach the text embedding
        self._placeholder_re = re.compile(
            "|".join(re.escape(t) for t in (IMAGE3D_TOKEN, IMAGE_TOKEN, *image_token_counts))
        )
        self._medm_vl: Any = None
        if format == "medm_vl":
            from medmvl.interop.medm_vl.prompt import MedmVlPrompt

            self._medm_vl = MedmVlPrompt(tokenizer, system_prompt=system_prompt)
        with_special = tokenizer("x")["input_ids"]
        self._bos = [with_special[0]] if with_special[0] == tokenizer.bos_token_id else []

    def messages(self, turns: Sequence[Turn]) -> list[dict[str, str]]:
        """Chat messages (``role``/``content``) for ``turns``, with the system prompt first if set."""
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": _ROLES[t.role], "content": t.text} for t in turns]

    def encode(self, sample: Sample) -> dict[str, torch.Tensor]:
        """Tokenize a training sample.

        Returns:
            ``input_ids`` [n] and ``labels`` [n] (LongTensor; ``-100`` = not supervised), ``n <=
            max_length``, each placeholder expanded to its count.

        Raises:
            AnnotationError: The template does not render prefixes consistently, or an answer lacks the
                end-of-turn token, or a placeholder has no configured count.
            SampleTooLongError: Truncation would cut image tokens or leave nothing supervised.
        """
        if self.format == "medm_vl":
            chunks = [self._medm_vl.encode([(t.role, t.text) for t in sample.turns], sample.where())]
        elif self.format == "plain":
            chunks = self._plain_chunks(sample)
        else:
            chunks = self._chat_chunks(sample)
        ids: list[int] = []
        labels: list[int] = []
        for chunk, supervised in chunks:
            for tid, sup in zip(chunk, supervised):
                if tid in self.placeholder_ids:
                    n = self._count(tid, sample)
                    ids += [tid] * n
                    labels += [IGNORE_INDEX] * n
                else:
                    ids.append(tid)
                    labels.append(tid if sup else IGNORE_INDEX)
        ids, labels = self._truncate(ids, labels, sample)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }

    def encode_prompt(self, sample_or_messages: Sample | Sequence[Mapping[str, str]]) -> torch.Tensor:
        """Tokenize a generation prompt: [n] LongTensor, placeholders expanded.

        A ``Sample`` whose last turn is ``gpt`` is prompted for that last answer (its text is dropped).
        Messages (``role``/``content`` dicts) are used as given, after the system prompt if set.
        """
        if isinstance(sample_or_messages, Sample):
            sample: Sample | None = sample_or_messages
            turns = list(sample_or_messages.turns)
            if turns[-1].role == "gpt":
                turns = turns[:-1]
            msgs = self.messages(turns)
        else:
            sample = None
            msgs = list(sample_or_messages)
            if self.system_prompt and (not msgs or msgs[0]["role"] != "system"):
                msgs = [{"role": "system", "content": self.system_prompt}, *msgs]
        if self.format == "medm_vl":
            ids = self._medm_vl_prompt(msgs)
        elif self.format == "plain":
            user = next(m["content"] for m in msgs if m["role"] == "user")
            ids = self._bos + self._placeholders(user)
        else:
            text = self._render(msgs, generation=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        out: list[int] = []
        for tid in ids:
            out += [tid] * (self._count(tid, sample) if tid in self.placeholder_ids else 1)
        if len(out) > self.max_length:
            where = sample.where() if sample else "prompt"
            raise SampleTooLongError(f"{where}: prompt has {len(out)} tokens > max_length={self.max_length}")
        return torch.tensor(out, dtype=torch.long)

    def _medm_vl_prompt(self, msgs: list[dict[str, str]]) -> list[int]:
        system = next((m["content"] for m in msgs if m["role"] == "system"), self.system_prompt)
        turns = [
            ("human" if m["role"] == "user" else "gpt", m["content"]) for m in msgs if m["role"] != "system"
        ]
        if system != self._medm_vl.system:
            from medmvl.interop.medm_vl.prompt import MedmVlPrompt

            return MedmVlPrompt(self.tokenizer, system_prompt=system).encode_prompt(turns)
        return self._medm_vl.encode_prompt(turns)

    def _render(self, msgs: list[dict[str, str]], generation: bool) -> str:
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation)

    def _chat_chunks(self, sample: Sample) -> list[tuple[list[int], list[bool]]]:
        msgs = self.messages(sample.turns)
        starts = [k for k, m in enumerate(msgs) if m["role"] == "assistant"]
        if not starts:
            raise AnnotationError(f"{sample.where()}: no gpt turn to supervise")
        texts = [self._render(msgs[:k], generation=True) for k in starts] + [self._render(msgs, False)]
        for prev, nxt in zip(texts, texts[1:]):
            if not nxt.startswith(prev):
                raise AnnotationError(
                    f"{sample.where()}: the chat template of tokenizer {self.tokenizer.name_or_path!r} renders "
                    f"a prompt with add_generation_prompt=True that is not a prefix of the longer conversation "
                    f"({prev[-40:]!r} vs {nxt[len(prev) - 40 : len(prev) + 10]!r}); it cannot be used for "
                    "training with exact prompts"
                )
        # Tokenize each whole prefix; keep it when it extends the previous tokens (then every prompt equals
        # its inference tokenization), else tokenize just the increment (a merge across the boundary).
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        ids, starts = list(encoded[0]), []
        for prev, text, whole in zip(texts, texts[1:], encoded[1:]):
            starts.append(len(ids))
            if whole[: len(ids)] == ids:
                ids = list(whole)
            else:
                ids += self.tokenizer(text[len(prev) :], add_special_tokens=False)["input_ids"]
        supervised = [False] * len(ids)
        eos = self.tokenizer.eos_token_id
        for j, (start, end) in enumerate(zip(starts, starts[1:] + [len(ids)])):
            if eos not in ids[start:end]:
                raise AnnotationError(
                    f"{sample.where()}: answer {j} has no end-of-turn token {self.tokenizer.eos_token!r} "
                    f"under the chat template of {self.tokenizer.name_or_path!r}; set eos_token to the "
                    "token the template closes assistant turns with"
                )
            stop = ids.index(eos, start) + 1
            supervised[start:stop] = [True] * (stop - start)
        return [(ids, supervised)]

    def _plain_chunks(self, sample: Sample) -> list[tuple[list[int], list[bool]]]:
        if len(sample.turns) != 2:
            raise AnnotationError(
                f"{sample.where()}: plain format expects one human turn (image "
                f"placeholders) and one gpt turn (caption), got {len(sample.turns)} turns"
            )
        prompt = self._bos + self._placeholders(sample.turns[0].text)
        caption = self.tokenizer(sample.turns[1].text, add_special_tokens=False)["input_ids"]
        caption = caption + [self.tokenizer.eos_token_id]
        return [(prompt, [False] * len(prompt)), (caption, [True] * len(caption))]

    def _placeholders(self, text: str) -> list[int]:
        return [self.tokenizer.convert_tokens_to_ids(m) for m in self._placeholder_re.findall(text)]

    def _count(self, token_id: int, sample: Sample | None) -> int:
        if token_id not in self.expand:
            token = self.tokenizer.convert_ids_to_tokens(token_id)
            where = sample.where() if sample else "prompt"
            raise AnnotationError(
                f"{where}: placeholder {token!r} has no image token count (configured: "
                f"{[self.tokenizer.convert_ids_to_tokens(i) for i in self.expand]})"
            )
        return self.expand[token_id]

    def _truncate(self, ids: list[int], labels: list[int], sample: Sample) -> tuple[list[int], list[int]]:
        n, limit = len(ids), self.max_length
        if n <= limit:
            return ids, labels
        image_end = max((k + 1 for k, t in enumerate(ids) if t in self.expand), default=0)
        if image_end > limit:
            why = f"its image tokens end at position {image_end}"
        elif all(label == IGNORE_INDEX for label in labels[:limit]):
            why = "no supervised token would remain"
        else:
            return ids[:limit], labels[:limit]
        raise SampleTooLongError(
            f"{sample.where()}: {n} tokens exceed max_length={limit} and cannot be truncated: {why} "
            f"({n - len([t for t in ids if t not in self.expand])} image tokens); raise max_length, shorten "
            "the sample, or drop it with on_error=skip"
        )
