"""load_tokenizer on real offline vocabularies: reference tokenization, family tokens, templates, cache."""

from __future__ import annotations

import pytest
import transformers

from medmvl.assets import resolve_path
from medmvl.models.llm.tokenizer import load_tokenizer, read_chat_template
from tests.helpers.offline import FAMILIES, LLAMA_CPP, family_tokenizer

VOCABS = {"qwen2.5": "qwen2", "llama3.2": "llama-bpe", "phi3": "phi-3", "phi2": "gpt-2"}
# The GGUF -> transformers conversion of the Llama-3 vocabulary splits this one string differently from
# the reference ids llama.cpp recorded; every other reference string matches.
KNOWN_DIVERGENCES = {"llama3.2": {"Cửa Việt"}}

# (len, eos id, pad id, <image> id, <image3d> id) after load_tokenizer
GOLDEN_IDS = {
    "qwen2.5": (151938, 151645, 151643, 151936, 151937),
    "llama3.2": (128259, 128009, 128256, 128257, 128258),
    "phi3": (32066, 32007, 32000, 32064, 32065),
    "phi2": (50259, 50256, 50256, 50257, 50258),
}
USER = [{"role": "user", "content": "<image>\nWhat is shown?"}]
GOLDEN_PROMPTS = {
    "qwen2.5": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<image>\nWhat is shown?<|im_end|>\n<|im_start|>assistant\n",
    "llama3.2": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
    "2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is "
    "shown?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "phi3": "<|user|>\n<image>\nWhat is shown?<|end|>\n<|assistant|>\n",
    "phi2": "Instruct: <image>\nWhat is shown?\nOutput:",
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_vocabulary_reproduces_llama_cpp_reference_ids(family):
    stem = LLAMA_CPP + f"ggml-vocab-{VOCABS[family]}.gguf"
    texts = resolve_path(stem + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = [
        [int(i) for i in line.split()] for line in resolve_path(stem + ".out").read_text().split("\n")
    ]
    assert len(texts) == len(expected) > 40
    tok = family_tokenizer(family)
    wrong = {t for t, ids in zip(texts, expected) if tok.encode(t, add_special_tokens=False) != ids}
    assert wrong == KNOWN_DIVERGENCES.get(family, set())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_tokens_and_prompt(family):
    tok = family_tokenizer(family)
    size, eos, pad, image, image3d = GOLDEN_IDS[family]
    assert (len(tok), tok.eos_token_id, tok.pad_token_id) == (size, eos, pad)
    assert tok.eos_token == FAMILIES[family]["eos_token"]
    assert tok.encode("<image><image3d>", add_special_tokens=False) == [image, image3d]
    prompt = tok.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
    assert prompt == GOLDEN_PROMPTS[family]
    assert tok.encode(prompt, add_special_tokens=False).count(image) == 1


def test_template_kwargs_survive_save_and_reload(tmp_path):
    tok = family_tokenizer("llama3.2")
    tok.save_pretrained(tmp_path)
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    render = reloaded.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
    assert render == GOLDEN_PROMPTS["llama3.2"]
    assert reloaded.eos_token == "<|eot_id|>" and reloaded.convert_tokens_to_ids("<image>") == 128257


def test_gguf_conversion_is_cached_atomically(tmp_path, monkeypatch):
    gguf = resolve_path(LLAMA_CPP + "ggml-vocab-phi-3.gguf")  # resolved with the real asset cache first
    monkeypatch.setenv("MEDMVL_CACHE", str(tmp_path))
    first = load_tokenizer(gguf_file=str(gguf), eos_token="<|end|>")
    (folder,) = (tmp_path / "tokenizers").iterdir()  # no temporary folder left behind
    assert (folder / "tokenizer.json").is_file()
    calls = []
    original = transformers.AutoTokenizer.from_pretrained

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return first if "gguf_file" in kwargs else original(*args, **kwargs)  # skip a second conversion

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    second = load_tokenizer(gguf_file=str(gguf), eos_token="<|end|>")
    assert calls == [((str(folder),), {"trust_remote_code": False})]
    assert second.get_vocab() == first.get_vocab() and second.chat_template == first.chat_template
    load_tokenizer(gguf_file=str(gguf), cache=False)
    assert calls[-1][1]["gguf_file"] == gguf.name and len(list((tmp_path / "tokenizers").iterdir())) == 1


def test_shipped_and_inline_templates():
    assert read_chat_template("phi2.jinja").startswith("{#- Phi-2 ships no chat template")
    assert read_chat_template("{{ messages[0]['content'] }}") == "{{ messages[0]['content'] }}"
    tok = load_tokenizer(
        gguf_file=FAMILIES["phi2"]["gguf_file"], chat_template="{{ messages[0]['content'] }}!"
    )
    assert tok.apply_chat_template(USER, tokenize=False) == "<image>\nWhat is shown?!"


def test_errors_name_the_problem():
    gpt2 = FAMILIES["phi2"]["gguf_file"]
    with pytest.raises(ValueError, match="has no chat template; set chat_template"):
        load_tokenizer(gguf_file=gpt2)
    with pytest.raises(ValueError, match=r"eos_token='<\|im_end\|>' is not a single token"):
        load_tokenizer(gguf_file=gpt2, chat_template="phi2.jinja", eos_token="<|im_end|>")
    with pytest.raises(ValueError, match="needs name_or_path"):
        load_tokenizer()
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_tokenizer(gguf_file="/nonexistent/nope.gguf")
    with pytest.raises(FileNotFoundError, match="nope.jinja"):
        read_chat_template("nope.jinja")
    with pytest.raises(ValueError, match="neither Jinja text nor a .jinja file"):
        read_chat_template("templates/chatml.txt")
    with pytest.raises(TypeError, match="chat_template_kwargs values"):
        load_tokenizer(gguf_file=gpt2, chat_template="phi2.jinja", chat_template_kwargs={"tools": [1]})
