"""MedM-VL's prompt, rendered and tokenized as MedM-VL does it (``format: medm_vl``).

MedM-VL (``lvlm/dataset/template``) uses one Vicuna-style text for every LLM family; only the string that
closes an answer differs (``EOS_BY_LLM_TYPE``)::

    <system> USER: <q1> ASSISTANT: <a1><eos>USER: <q2> ASSISTANT:

Every question and answer is ``strip()``-ped and otherwise kept as written: a placeholder after the
question stays there, ``"<image>\\n Which"`` keeps its inner ``"\\n "``. The text is split at ``<image>`` /
``<image3d>``; each piece is tokenized on its own with the tokenizer's special tokens and its BOS dropped
(one BOS starts the prompt when the tokenizer adds one), and each placeholder becomes one id — here the
tokenizer's own placeholder token, which the data pipeline expands to the connector's token count.
Training labels follow MedM-VL's ``make_labels``: per round (the prompt split at the eos string) the text
up to and including ``" ASSISTANT:"`` is masked, the answer and its eos are supervised; where MedM-VL
would warn "tokenization mismatch" and silently mask the whole sample, this raises.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from medmvl.data.schema import IMAGE3D_TOKEN, IMAGE_TOKEN, AnnotationError

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
EOS_BY_LLM_TYPE = {
    "qwen2": "<|im_end|>",
    "llama": "</s>",
    "llama3": "<|eot_id|>",
    "phi": "<|endoftext|>",
    "phi3": "<|endoftext|>",
}
"""The answer-closing string of MedM-VL's template per ``llm_type`` (its ``conv_version`` of that name)."""
SEPARATOR = " ASSISTANT:"
_SPLIT = re.compile(f"({re.escape(IMAGE_TOKEN)}|{re.escape(IMAGE3D_TOKEN)})")


def render(questions: Sequence[str], answers: Sequence[str], *, eos: str, system: str | None = None) -> str:
    """MedM-VL's prompt text; one answer fewer than questions ends it with ``"ASSISTANT:"`` (generation)."""
    answers = list(answers)
    if len(questions) == len(answers) + 1:
        answers.append("")
    text = (SYSTEM if system is None else system) + " "
    for question, answer in zip(questions, answers):
        text += "USER: " + question.strip() + " "
        answer = answer.strip()
        text += f"ASSISTANT: {answer}{eos}" if answer else "ASSISTANT:"
    return text


class MedmVlPrompt:
    """Token ids of MedM-VL's prompt for a conversation.

    Args:
        tokenizer: the imported model's tokenizer; its ``eos_token`` is the template's answer-closing string
            (:data:`EOS_BY_LLM_TYPE`) and it holds ``<image>`` / ``<image3d>`` as single tokens.
        system_prompt: replaces MedM-VL's system sentence (``None``: MedM-VL's).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.system = system_prompt
        self.eos = tokenizer.eos_token
        self.placeholder = {t: tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_TOKEN, IMAGE3D_TOKEN)}
        bos = tokenizer.bos_token_id
        self.offset = 1 if bos is not None and tokenizer("test string")["input_ids"][:1] == [bos] else 0

    def ids(self, text: str) -> list[int]:
        """MedM-VL's ``tokenizer_special_token``: pieces between placeholders tokenized one by one."""
        out: list[int] = []
        for chunk in _SPLIT.split(text):
            if chunk in self.placeholder:
                out.append(self.placeholder[chunk])
            elif chunk:
                if not out and self.offset:
                    out.append(self.tokenizer.bos_token_id)
                out += self.tokenizer(chunk)["input_ids"][self.offset :]
        return out

    def encode_prompt(self, turns: Sequence[tuple[str, str]]) -> list[int]:
        """Ids of the generation prompt for ``(role, text)`` turns (``human``/``gpt``) ending with a question."""
        questions, answers = _split_turns(turns)
        return self.ids(render(questions, answers, eos=self.eos, system=self.system))

    def encode(self, turns: Sequence[tuple[str, str]], where: str) -> tuple[list[int], list[bool]]:
        """Ids and which of them are supervised, for a conversation ending with an answer."""
        questions, answers = _split_turns(turns)
        if len(answers) != len(questions) or not answers:
            raise AnnotationError(f"{where}: MedM-VL's prompt needs a gpt answer after every question")
        prompt = render(questions, answers, eos=self.eos, system=self.system)
        ids = self.ids(prompt)
        supervised = [True] * len(ids)
        cur = 0
        eos_length = len(self.tokenizer.encode(self.eos))
        for k, round_text in enumerate(prompt.split(self.eos)):
            parts = round_text.split(SEPARATOR)
            if round_text == "" or len(parts) != 2:
                break
            round_len = len(self.ids(round_text)) + 1  # + the eos the split removed
            instruction_len = len(self.ids(parts[0] + SEPARATOR))
            if eos_length > 1 and k:  # a tokenizer that adds BOS: no BOS inside the conversation
                round_len, instruction_len = round_len - 1, instruction_len - 1
            supervised[cur : cur + instruction_len] = [False] * instruction_len
            cur += round_len
        supervised[cur:] = [False] * (len(ids) - cur)
        if cur != len(ids):
            raise AnnotationError(
                f"{where}: MedM-VL's label mask covers {cur} of {len(ids)} tokens (its 'tokenization "
                "mismatch'); an answer or question contains the eos string or ' ASSISTANT:'"
            )
        return ids, supervised


def _split_turns(turns: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """MedM-VL's ``get_list_from_message``: a leading non-human turn is dropped, then turns alternate."""
    turns = list(turns)
    if turns and turns[0][0] != "human":
        turns = turns[1:]
    return [t for r, t in turns[0::2]], [t for r, t in turns[1::2]]
