"""Chat-template tokenization and label masks under the real templates of Qwen2.5, Llama-3.2, Phi-3, Phi-2."""

from __future__ import annotations

import pytest
import torch

from medmvl.data.conversation import IGNORE_INDEX, ConversationEncoder, SampleTooLongError
from medmvl.data.schema import AnnotationError, parse_sample
from medmvl.models.llm.tokenizer import load_tokenizer
from tests.helpers.offline import FAMILIES, family_tokenizer

FAMILY_NAMES = list(FAMILIES)
# Phi-2's template ends the prompt with "Output:" and the answer starts with a space (GPT-2 BPE "Ġ...").
ANSWER_LEAD = {"qwen2.5": "", "llama3.2": "", "phi3": "", "phi2": " "}


def make_sample(*values: str, images: int = 1, sid: str = "s1", source: str = "train.json"):
    turns = [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]
    record = {"id": sid, "conversations": turns, "image": [f"{k}.png" for k in range(images)]}
    sample, problems = parse_sample(record, 3, source=source, require_answer=False)
    assert sample is not None, problems
    return sample


MULTI = ("<image>\nWhat is shown?", "A chest X-ray.", "Any effusion?", "No, the lungs are clear.")


def supervised_spans(tokenizer, encoded: dict[str, torch.Tensor]) -> list[str]:
    """Decode each maximal run of supervised tokens."""
    spans, run = [], []
    for tid, label in zip(encoded["input_ids"].tolist(), encoded["labels"].tolist()):
        if label != IGNORE_INDEX:
            assert label == tid
            run.append(tid)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    return spans + ([tokenizer.decode(run)] if run else [])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_answers_and_end_of_turn_are_the_only_supervised_tokens(family):
    tok = family_tokenizer(family)
    encoder = ConversationEncoder(tok, image_token_counts={"<image>": 5}, max_length=512)
    encoded = encoder.encode(make_sample(*MULTI))
    eot, lead = tok.eos_token, ANSWER_LEAD[family]
    assert supervised_spans(tok, encoded) == [
        f"{lead}A chest X-ray.{eot}",
        f"{lead}No, the lungs are clear.{eot}",
    ]
    ids = encoded["input_ids"]
    image = ids == tok.convert_tokens_to_ids("<image>")
    assert image.sum() == 5 and (encoded["labels"][image] == IGNORE_INDEX).all()
    first = int(image.nonzero()[0])
    assert image[first : first + 5].all()  # one contiguous block per placeholder


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_training_prompts_equal_inference_prompts(family):
    tok = family_tokenizer(family)
    encoder = ConversationEncoder(tok, image_token_counts={"<image>": 4}, max_length=512)
    encoded = encoder.encode(make_sample(*MULTI))
    for turns in (MULTI[:2], MULTI):  # prompt for the first answer, then for the second
        prompt = encoder.encode_prompt(make_sample(*turns))
        assert torch.equal(encoded["input_ids"][: len(prompt)], prompt)
        assert encoded["labels"][len(prompt) - 1] == IGNORE_INDEX
        assert encoded["labels"][len(prompt)] != IGNORE_INDEX  # the answer starts right after the prompt
    messages = [{"role": "user", "content": MULTI[0]}]
    assert torch.equal(encoder.encode_prompt(messages), encoder.encode_prompt(make_sample(*MULTI[:2])))


def test_qwen_golden_rendering(qwen):
    encoder = ConversationEncoder(qwen, image_token_counts={"<image>": 2}, max_length=512)
    encoded = encoder.encode(make_sample("<image>\nWhat is shown?", "A chest X-ray."))
    assert qwen.decode(encoded["input_ids"]) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image><image>\nWhat is shown?<|im_end|>\n"
        "<|im_start|>assistant\nA chest X-ray.<|im_end|>\n"
    )
    assert encoded["labels"][-1] == IGNORE_INDEX  # the "\n" after <|im_end|> is not supervised
    assert encoded["labels"][-2] == qwen.convert_tokens_to_ids("<|im_end|>")


def test_system_prompt_replaces_the_template_default(qwen):
    encoder = ConversationEncoder(
        qwen, image_token_counts={"<image>": 1}, max_length=512, system_prompt="You are a radiologist."
    )
    prompt = encoder.encode_prompt(make_sample("<image>\nFindings?", images=1))
    assert qwen.decode(prompt) == (
        "<|im_start|>system\nYou are a radiologist.<|im_end|>\n<|im_start|>user\n<image>\nFindings?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_several_images_expand_in_order(qwen):
    encoder = ConversationEncoder(qwen, image_token_counts={"<image>": 3, "<image3d>": 2}, max_length=512)
    sample = make_sample("<image> vs <image>: change?", "Larger.", images=2)
    ids = encoder.encode(sample)["input_ids"]
    assert int((ids == qwen.convert_tokens_to_ids("<image>")).sum()) == 6


def test_plain_format_is_images_caption_eos(qwen):
    encoder = ConversationEncoder(qwen, image_token_counts={"<image>": 3}, max_length=64, format="plain")
    encoded = encoder.encode(make_sample("<image>\nDescribe the image.", "Axial CT of the head."))
    assert qwen.decode(encoded["input_ids"]) == "<image><image><image>Axial CT of the head.<|im_end|>"
    assert encoded["labels"][:3].tolist() == [IGNORE_INDEX] * 3
    assert torch.equal(encoded["labels"][3:], encoded["input_ids"][3:])
    assert qwen.decode(encoder.encode_prompt(make_sample("<image>\nDescribe."))) == "<image><image><image>"


def test_plain_format_keeps_a_bos_the_tokenizer_adds():
    tok = family_tokenizer("phi3")  # the Phi-3 vocabulary adds <s> by default
    encoder = ConversationEncoder(tok, image_token_counts={"<image>": 2}, max_length=64, format="plain")
    ids = encoder.encode(make_sample("<image>", "Knee MRI."))["input_ids"].tolist()
    assert ids[:3] == [tok.bos_token_id] + [tok.convert_tokens_to_ids("<image>")] * 2
    assert ids[-1] == tok.convert_tokens_to_ids("<|end|>")


def test_truncation_cuts_the_answer_end_only(qwen):
    long_answer = " ".join(["normal"] * 40)
    sample = make_sample("<image>\nReport?", long_answer)
    full = ConversationEncoder(qwen, image_token_counts={"<image>": 8}, max_length=512).encode(sample)
    cut = ConversationEncoder(qwen, image_token_counts={"<image>": 8}, max_length=len(full["input_ids"]) - 10)
    short = cut.encode(sample)
    assert len(short["input_ids"]) == len(full["input_ids"]) - 10
    assert torch.equal(short["input_ids"], full["input_ids"][: len(short["input_ids"])])
    assert torch.equal(short["labels"], full["labels"][: len(short["labels"])])
    assert short["labels"][-1] != IGNORE_INDEX  # the cut falls inside the answer


def test_truncation_never_cuts_images_or_every_answer_token(qwen):
    sample = make_sample("<image>\nReport?", "Normal.", sid="long-1", source="val.json")
    counts = {"<image>": 50}
    full = ConversationEncoder(qwen, image_token_counts=counts, max_length=512).encode(sample)
    n = len(full["input_ids"])
    image_end = int((full["input_ids"] == qwen.convert_tokens_to_ids("<image>")).nonzero().max()) + 1
    with pytest.raises(
        SampleTooLongError,
        match=rf"val.json: sample 3 \(id 'long-1'\): {n} tokens exceed "
        rf"max_length=40 .*image tokens end at position {image_end}",
    ):
        ConversationEncoder(qwen, image_token_counts=counts, max_length=40).encode(sample)
    answer_start = int((full["labels"] != IGNORE_INDEX).nonzero().min())
    with pytest.raises(SampleTooLongError, match="no supervised token would remain"):
        ConversationEncoder(qwen, image_token_counts=counts, max_length=answer_start).encode(sample)
    assert isinstance(SampleTooLongError("x"), AnnotationError)


def test_placeholder_without_count_is_an_error(qwen):
    encoder = ConversationEncoder(qwen, image_token_counts={"<image>": 2}, max_length=64)
    turns = [{"from": "human", "value": "<image3d>\nOrgan?"}, {"from": "gpt", "value": "Liver."}]
    sample, _ = parse_sample({"id": "v", "image3d": ["ct.nii"], "conversations": turns}, 0, source="f.json")
    with pytest.raises(AnnotationError, match=r"f.json: sample 0 \(id 'v'\): placeholder '<image3d>' has no"):
        encoder.encode(sample)


def test_end_of_turn_missing_from_the_template_is_an_error():
    # Phi-3.5's template closes turns with <|end|>, not with the vocabulary's default eos <|endoftext|>
    tok = load_tokenizer(**{**FAMILIES["phi3"], "eos_token": "<|endoftext|>"})
    encoder = ConversationEncoder(tok, image_token_counts={"<image>": 1}, max_length=64)
    with pytest.raises(AnnotationError, match=r"sample 3 \(id 's1'\): answer 0 has no end-of-turn token"):
        encoder.encode(make_sample(*MULTI))


def test_template_whose_prompt_is_not_a_prefix_is_rejected():
    template = (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT>{% endif %}"
    )
    tok = load_tokenizer(**{**FAMILIES["phi3"], "chat_template": template})
    encoder = ConversationEncoder(tok, image_token_counts={"<image>": 1}, max_length=64)
    with pytest.raises(AnnotationError, match="not a prefix of the longer conversation"):
        encoder.encode(make_sample("<image>\nQ?", "A."))


def test_bad_configuration(qwen):
    with pytest.raises(ValueError, match="'<img>' must be one token"):
        ConversationEncoder(qwen, image_token_counts={"<img>": 4}, max_length=8)
    with pytest.raises(ValueError, match="format must be"):
        ConversationEncoder(qwen, image_token_counts={}, max_length=8, format="vicuna")
