"""LLM-free caption pre-training of a :class:`CaptionSlotEncoder` (cached), for from-scratch encoders.

Stage 1 of a from-scratch recipe: before the language model is involved, the encoder learns to turn each
image into the tokens of its caption. Every caption (the final ``gpt`` turn of a LLaVA pre-training file:
``{"image": [path], "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value":
caption}]}``) is tokenized with the LLM's tokenizer and padded to ``num_slots`` tokens; slot ``k`` is
trained with cross-entropy to predict the ``k``-th token. Only the encoder and the LLM's embedding rows of
the caption tokens are needed, never an LLM forward pass, so this takes seconds to a minute on a CPU.

``caption_pretrained`` is a Hydra target that returns the pre-trained encoder, so an experiment only names
it in ``encoder:``. The result is cached under ``<medmvl cache>/encoders/`` by a hash of every input
(backbone and LLM configs, training settings, the caption file's bytes), like the GGUF conversion: the
first run trains, later runs load.

The steps, in order: :func:`caption_targets` and :func:`slot_vocabulary` turn captions into per-slot
targets, :func:`load_captioned_images` reads the images (or volumes), :func:`fit_slots` is the training
loop, and :func:`caption_pretrained` ties them to the cache (the training settings travel as one
:class:`CaptionTraining`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from medmvl.assets import cache_dir
from medmvl.data.conversation import IGNORE_INDEX
from medmvl.data.images import ImageTransform, load_image
from medmvl.data.media import MediaPathError, resolve_media_path
from medmvl.data.schema import raise_on_errors, read_annotations
from medmvl.data.volumes import VolumeTransform
from medmvl.models.encoders.caption_slots import CaptionSlotEncoder

log = logging.getLogger(__name__)


def caption_targets(
    captions: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    num_slots: int | None = None,
    pad_text: str = ".",
    unknown_text: str | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Tokenize captions into slot targets.

    Args:
        captions: one caption per image.
        tokenizer: the LLM's tokenizer.
        num_slots: slots per image (``None``: the longest caption's length).
        pad_text: one-token text that pads short captions (supervised: the slot learns to emit it).
        unknown_text: a word that marks a fact the caption does not know (e.g. ``unknown``); its tokens are
            not supervised, so the slot is free to emit its best guess.

    Returns:
        ``targets`` [n, num_slots] (indices into the vocabulary, ``-100`` where not supervised) and
        ``vocab_ids`` (the sorted LLM token ids that are targets anywhere).

    Raises:
        ValueError: ``pad_text`` or ``unknown_text`` is not one token, or a caption is longer than
            ``num_slots`` tokens.
    """
    pad = _single_token(tokenizer, pad_text, "pad_text")
    unknown: set[int] = set()
    if unknown_text:  # the word alone and after a space, whichever is one token
        variants = [
            tokenizer(t, add_special_tokens=False)["input_ids"] for t in (unknown_text, " " + unknown_text)
        ]
        unknown = {ids[0] for ids in variants if len(ids) == 1}
        if not unknown:
            raise ValueError(f"unknown_text {unknown_text!r} is not a single token of the LLM's tokenizer")
    rows = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in captions]
    width = num_slots or max(len(r) for r in rows)
    for i, (caption, ids) in enumerate(zip(captions, rows)):
        if len(ids) > width:
            raise ValueError(
                f"caption {i} ({caption!r}) is {len(ids)} tokens long; num_slots is {width}: raise num_slots"
            )
    rows = [ids + [pad] * (width - len(ids)) for ids in rows]
    vocab_ids = sorted({t for row in rows for t in row} - unknown)
    index = {t: j for j, t in enumerate(vocab_ids)}
    targets = [[IGNORE_INDEX if t in unknown else index[t] for t in row] for row in rows]
    return torch.tensor(targets, dtype=torch.long), vocab_ids  # [n, s]


def slot_vocabulary(targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[slots, vocab]`` bool: the tokens each slot is a target for somewhere (all, for a never-taught slot)."""
    allowed = torch.zeros(targets.shape[1], vocab_size, dtype=torch.bool)
    rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    allowed[cols, targets[rows, cols]] = True
    allowed[~allowed.any(1)] = True
    return allowed


def _single_token(tokenizer: PreTrainedTokenizerBase, text: str, name: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{name} {text!r} must be a single token of the LLM's tokenizer, got ids {ids}")
    return ids[0]


def load_captioned_images(
    annotations: str | os.PathLike,
    preprocess: Mapping[str, Any],
    image_dir: str | os.PathLike | None = None,
    volume: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Images or volumes (preprocessed for the encoder) and captions of a LLaVA pre-training file.

    A 2D backbone (``preprocess`` has ``image_size``) reads each sample's one ``image``; a 3D backbone
    (``volume_size``) reads each sample's one ``image3d`` through the training loader's
    :class:`~medmvl.data.volumes.VolumeTransform` (evaluation mode) with the ``volume`` options.

    Returns:
        ``pixels`` [n, c, h, w] (2D) or [n, c, d, h, w] (3D) and the ``n`` captions (final ``gpt`` turns).

    Raises:
        AnnotationError: invalid samples; ValueError: a sample without exactly one image (volume).
    """
    samples, problems = read_annotations(annotations, require_answer=True)
    raise_on_errors([p for p in problems if p.severity == "error"])
    root = Path(image_dir) if image_dir is not None else Path(annotations).parent
    if "volume_size" in preprocess:
        kind, transform = "image3d", VolumeTransform.from_preprocess(preprocess, options=volume)
    else:
        kind = "image"
        image_transform = ImageTransform.from_preprocess(preprocess)
        transform = lambda path: image_transform(load_image(path))  # noqa: E731
    pixels, captions = [], []
    for s in samples:
        paths = s.images3d if kind == "image3d" else s.images
        if len(paths) != 1 or len(s.images) + len(s.images3d) != 1:
            raise ValueError(
                f"{s.where()}: caption pre-training of a {kind} backbone needs exactly one {kind}, got "
                f"{len(s.images)} image and {len(s.images3d)} image3d"
            )
        try:
            path = resolve_media_path(paths[0], root, kind)
        except MediaPathError as err:
            raise ValueError(f"{s.where()}: {err}") from err
        pixels.append(transform(path))
        captions.append(s.turns[-1].text)
    return torch.stack(pixels), captions  # [n, c, h, w] or [n, c, d, h, w]


def fit_slots(
    encoder: CaptionSlotEncoder,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.05,
    seed: int = 0,
) -> list[float]:
    """Train the backbone and slot head (not the vocabulary rows) with per-slot cross-entropy.

    AdamW with a cosine decay; batches drawn with replacement from a seeded generator.

    Returns:
        The loss of every step.
    """
    params = [p for n, p in encoder.named_parameters() if n != "vocab"]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    gen = torch.Generator().manual_seed(seed)
    encoder.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(len(pixels), (batch_size,), generator=gen)
        logits = encoder.slot_logits(pixels[idx])  # [b, s, v]
        loss = F.cross_entropy(logits.flatten(0, 1), targets[idx].flatten(), ignore_index=IGNORE_INDEX)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 5) == 0:
            log.info("caption pre-training step %d/%d: loss %.4f", step + 1, steps, loss)
    opt.zero_grad(set_to_none=True)
    return losses


def _config(node: Any) -> dict[str, Any]:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


@dataclass(frozen=True)
class CaptionTraining:
    """How captions become slot targets and how the slots are trained; part of the cache key.

    Attributes:
        num_slots: Slots per image (``None``: the longest caption's length); see :func:`caption_targets`.
        pad_text: One-token text that pads short captions.
        unknown_text: A one-token word whose tokens are not supervised.
        steps: Optimizer steps; see :func:`fit_slots`.
        batch_size: Images per step (drawn with replacement).
        lr: Peak learning rate of the cosine schedule.
        weight_decay: AdamW weight decay.
        seed: Seeds the backbone's and slot head's initialisation and the batch draws.
    """

    num_slots: int | None = None
    pad_text: str = "."
    unknown_text: str | None = None
    steps: int = 300
    batch_size: int = 32
    lr: float = 1.0e-3
    weight_decay: float = 0.05
    seed: int = 0


def caption_pretrained(
    *,
    backbone: Mapping[str, Any],
    llm: Mapping[str, Any],
    annotations: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    prepare: Mapping[str, Any] | None = None,
    volume: Mapping[str, Any] | None = None,
    num_slots: int | None = None,
    pad_text: str = ".",
    unknown_text: str | None = None,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1.0e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    hard: bool = False,
    cache: bool = True,
) -> CaptionSlotEncoder:
    """Build a :class:`CaptionSlotEncoder` and caption-pre-train it, or load the cached result.

    Used with ``_recursive_: false`` so the LLM is only loaded when the cache misses.

    Args:
        backbone: config (``_target_`` ...) of the image backbone, e.g. ``PatchEncoder``, or of a 3D one
            (e.g. ``Vit3dEncoder``: the captions' samples then carry ``image3d`` volumes).
        llm: config of the LLM the encoder will feed (its tokenizer and input embeddings are used).
        annotations: LLaVA pre-training file of image–caption pairs.
        image_dir: folder of relative image paths (default: the file's folder).
        prepare: optional config of a callable run first that (re)builds ``annotations`` when needed (e.g.
            the demo builder, which returns at once when its folder already holds the same build).
        volume: how volumes are read (fields of ``medmvl.data.volumes.VolumeOptions``, i.e. ``data.volume``),
            for a 3D backbone.
        num_slots, pad_text, unknown_text: caption tokenization (see :func:`caption_targets`).
        steps, batch_size, lr, weight_decay, seed: training settings (see :func:`fit_slots`).
        hard: the encoder emits its most likely token per slot (see :class:`CaptionSlotEncoder`).
        cache: reuse / write ``<medmvl cache>/encoders/caption-slots-<hash>``.
    """
    backbone_cfg, llm_cfg = _config(backbone), _config(llm)
    annotations = _prepared_annotations(annotations, prepare)
    volume_cfg = _config(volume) if volume is not None else None
    training = CaptionTraining(
        num_slots=num_slots,
        pad_text=pad_text,
        unknown_text=unknown_text,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
    )
    settings = _cache_settings(backbone_cfg, llm_cfg, annotations, volume_cfg, training)
    folder = _cache_folder(settings)
    if cache and (folder / "model.safetensors").is_file():
        return _load_cached(folder, hard=hard)
    encoder = _train_encoder(backbone_cfg, llm_cfg, annotations, image_dir, volume_cfg, training, hard=hard)
    if cache:
        _save_cached(encoder, settings, folder)
    return encoder


def _prepared_annotations(annotations: str | os.PathLike, prepare: Mapping[str, Any] | None) -> Path:
    """Run the ``prepare`` callable (if any), then check that the caption file exists.

    Raises:
        FileNotFoundError: ``annotations`` is not a file (after ``prepare``).
    """
    annotations = Path(annotations)
    if prepare is not None:
        instantiate(prepare)
    if not annotations.is_file():
        raise FileNotFoundError(f"caption pre-training file {str(annotations)!r} does not exist")
    return annotations


def _cache_settings(
    backbone_cfg: dict[str, Any],
    llm_cfg: dict[str, Any],
    annotations: Path,
    volume_cfg: dict[str, Any] | None,
    training: CaptionTraining,
) -> dict[str, Any]:
    """Every input that changes the trained weights (hashed into the cache key, kept as ``settings.json``).

    The LLM's ``dtype`` and ``attn_implementation`` are left out: only its tokenizer and embedding rows
    are used. The key order is that of ``settings.json``.
    """
    return {
        "backbone": backbone_cfg,
        "llm": {k: v for k, v in llm_cfg.items() if k not in ("dtype", "attn_implementation")},
        "annotations_sha256": hashlib.sha256(annotations.read_bytes()).hexdigest(),
        **({"volume": volume_cfg} if volume_cfg is not None else {}),
        **asdict(training),  # num_slots, pad_text, unknown_text, steps, batch_size, lr, weight_decay, seed
    }


def _cache_folder(settings: Mapping[str, Any]) -> Path:
    """``<medmvl cache>/encoders/caption-slots-<first 16 hex digits of the settings' sha256>``."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir() / "encoders" / f"caption-slots-{key}"


def _load_cached(folder: Path, *, hard: bool) -> CaptionSlotEncoder:
    """The encoder saved in ``folder`` (``hard`` is not part of the key: it only changes the forward)."""
    config = json.loads((folder / "config.json").read_text())
    encoder = instantiate({**config, "hard": hard})
    encoder.load_state_dict(load_file(folder / "model.safetensors"))
    log.info("caption-pre-trained encoder loaded from %s", folder)
    return encoder


def _save_cached(encoder: CaptionSlotEncoder, settings: Mapping[str, Any], folder: Path) -> None:
    """Write weights, config and settings to a private folder, then move it to ``folder`` in one step."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(encoder.export_config(), indent=1))
    (tmp / "settings.json").write_text(json.dumps(settings, indent=1, default=str))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process cached the same encoder first
        pass


def _train_encoder(
    backbone_cfg: dict[str, Any],
    llm_cfg: dict[str, Any],
    annotations: Path,
    image_dir: str | os.PathLike | None,
    volume_cfg: dict[str, Any] | None,
    training: CaptionTraining,
    *,
    hard: bool,
) -> CaptionSlotEncoder:
    """Seed, build the encoder over the captioned images, and fit its slots (see :func:`fit_slots`)."""
    start = time.time()
    torch.manual_seed(training.seed)  # the backbone's and slot head's initialisation
    encoder, pixels, targets = _untrained_encoder(
        backbone_cfg, llm_cfg, annotations, image_dir, volume_cfg, training, hard=hard
    )
    losses = fit_slots(
        encoder,
        pixels,
        targets,
        steps=training.steps,
        batch_size=training.batch_size,
        lr=training.lr,
        weight_decay=training.weight_decay,
        seed=training.seed,
    )
    log.info(
        "caption pre-training: %d images, %d slots, %d-token vocabulary, loss %.3f -> %.3f in %.0f s",
        len(pixels),
        targets.shape[1],
        len(encoder.vocab_ids),
        losses[0],
        losses[-1],
        time.time() - start,
    )
    return encoder


def _untrained_encoder(
    backbone_cfg: dict[str, Any],
    llm_cfg: dict[str, Any],
    annotations: Path,
    image_dir: str | os.PathLike | None,
    volume_cfg: dict[str, Any] | None,
    training: CaptionTraining,
    *,
    hard: bool,
) -> tuple[CaptionSlotEncoder, torch.Tensor, torch.Tensor]:
    """A fresh encoder whose vocabulary rows are the LLM's embeddings of the caption tokens, and its data.

    Builds the backbone before the LLM (the order in which they draw from the seeded generator), reads
    the images, and tokenizes the captions. The LLM is no longer referenced once this returns.

    Returns:
        The encoder, ``pixels`` [n, c, h, w] (2D) or [n, c, d, h, w] (3D) and ``targets`` [n, slots].
    """
    backbone_module = instantiate(backbone_cfg)
    lm = instantiate(llm_cfg)
    pixels, captions = load_captioned_images(annotations, backbone_module.preprocess, image_dir, volume_cfg)
    targets, vocab_ids = caption_targets(
        captions, lm.tokenizer, training.num_slots, training.pad_text, training.unknown_text
    )
    encoder = CaptionSlotEncoder(
        backbone=backbone_module,
        num_slots=targets.shape[1],
        vocab_ids=vocab_ids,
        out_dim=lm.hidden_size,
        hard=hard,
    )
    encoder.init_vocab(lm.model.get_input_embeddings().weight)  # [vocab, d_llm] -> rows vocab_ids
    encoder.allowed.copy_(slot_vocabulary(targets, len(vocab_ids)))  # [slots, len(vocab_ids)]
    return encoder, pixels, targets
