"""``trainer.precision=auto``: the Lightning precision of this machine, from what it is and a short probe.

* CUDA with bf16 support (Ampere and newer): ``bf16-mixed``, no probe. Tensor cores run bf16 matmuls at
  many times the fp32 rate, autocast's casts are cheap GPU kernels, and activations take half the
  memory; a probe of a small block would time kernel launches rather than the run's matmuls (on an H100
  a launch-bound batch-16 step was 0.82x of fp32, batch 64 2.1x, docs/efficiency.md). CUDA without bf16:
  ``32-true`` (``16-mixed`` needs loss scaling; ask for it explicitly).
* CPU: measured. Whether bf16 pays depends on the chip (AMX, AVX-512 BF16 or neither) and on what the
  step does besides matmuls, so a fast bf16 matmul alone does not decide it (on an Intel Xeon with AMX
  the matmul was 3.1x fp32 and the step no faster). :func:`probe_cpu` times a training step of one
  transformer block (LayerNorm, attention, GELU MLP; 2 x 64 positions at the LLM's hidden size, which
  train.py passes; fp32 parameters, forward under ``torch.autocast("cpu", torch.bfloat16)`` as
  Lightning's ``bf16-mixed`` runs it, backward outside) against the same step in fp32, warm-up
  excluded, the median of back-to-back pairs; ``bf16-mixed`` only when the bf16 step is at least
  ``MARGIN`` times faster, else ``32-true``. A bf16 matmul far slower than fp32 (no native bf16) stops
  the probe before the step. About a second or less; measured once per process (and inherited by the
  processes Lightning's launcher starts, so every rank agrees).
* A strategy with its own mixed precision (``trainer=fsdp``: FSDP2's ``param_dtype``): ``32-true``.
* Anything else (``bf16-mixed``, ``32-true``, ``16-mixed``, ...) is returned unchanged.

docs/precision.md has the numbers of both machines measured so far.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

AUTO = "auto"
BF16, FP32 = "bf16-mixed", "32-true"
# bf16 must beat fp32 by this factor: a few percent is within a shared machine's noise, and bf16 rounds
MARGIN = 1.15
# a bf16 matmul this much slower than fp32 means no native bf16: the step probe is skipped
MATMUL_GATE = 4.0
# the probed block: batch 2 x 64 positions at the model's width (default: 512, a small LLM's)
WIDTH, BATCH, SEQ = 512, 2, 64
# at least REPEATS fp32 / bf16 step pairs, more (up to MAX_PAIRS) until MIN_MEASURE_S of measuring:
# steps of a narrow block take ~2 ms, where one descheduled thread doubles a step
REPEATS, MAX_PAIRS, MIN_MEASURE_S = 3, 40, 0.25
# the probe's torch threads: one measures the kernels, not a shared machine's thread scheduling (two
# threads on a 2-core VM next to other jobs gave 0.99-1.34x for a block that is 1.9-2.3x on one)
PROBE_THREADS = 1
# what resolve_precision passes to child processes (Lightning's launcher re-runs train.py for ranks 1..)
_ENV = "MEDMVL_PRECISION_AUTO"
_CACHE: dict[str, Resolved] = {}


@dataclass(frozen=True)
class Resolved:
    """What ``trainer.precision`` became and why.

    Attributes:
        precision: the concrete Lightning precision string.
        requested: what the config said (``auto`` or the explicit value).
        device: ``cpu`` / ``cuda`` / the accelerator asked for.
        measurements: the probe's numbers (``fp32_step_ms``, ``bf16_step_ms``, ``bf16_speedup``,
            ``matmul_*``, ``probe_ms``) and ``reason``; empty for an explicit value.
    """

    precision: str
    requested: str
    device: str
    measurements: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One log line: ``precision=auto -> 32-true (fp32 step 12.3 ms, bf16 step 980 ms: 0.01x)``."""
        m = self.measurements
        if "fp32_step_ms" in m and "bf16_step_ms" in m:
            detail = (
                f"fp32 step {m['fp32_step_ms']:.1f} ms, bf16 step {m['bf16_step_ms']:.1f} ms: "
                f"{m['bf16_speedup']:.2f}x, bf16 needs {m.get('margin', MARGIN)}x"
            )
        else:
            detail = m.get("reason", self.device)
        return f"precision={self.requested} -> {self.precision} ({detail})"


def choose(fp32_s: float, bf16_s: float, margin: float = MARGIN) -> str:
    """``bf16-mixed`` when the bf16 step is at least ``margin`` times faster than fp32, else ``32-true``."""
    return BF16 if bf16_s > 0 and fp32_s / bf16_s >= margin else FP32


class _Block(torch.nn.Module):
    """A pre-norm transformer block: LayerNorm, fused-QKV SDPA attention, LayerNorm, GELU MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv, self.out = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.up, self.down = torch.nn.Linear(width, 4 * width), torch.nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm2(x))))


def _best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up (noise on a shared machine only adds time)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def probe_cpu(
    repeats: int = REPEATS, width: int = WIDTH, margin: float = MARGIN, threads: int | None = PROBE_THREADS
) -> dict[str, Any]:
    """Time an fp32 and a bf16-autocast training step (forward + backward) of a small block on the CPU.

    First a gate: the fastest of a few ``[64, width] @ [width, width]`` matmuls in each dtype; bf16 more
    than ``MATMUL_GATE`` times slower (no native bf16) ends the probe there. Then a warm-up step of
    each, and fp32 / bf16 step pairs back to back (so load on a shared machine hits both alike): at
    least ``repeats``, more until ``MIN_MEASURE_S`` have been spent measuring (``MAX_PAIRS`` at most).

    Returns the median step times ``fp32_step_ms`` / ``bf16_step_ms``, ``bf16_speedup`` (the median of
    the pairs' fp32 / bf16 ratios, what :func:`resolve_precision` compares with the margin; above 1:
    bf16 faster), ``pairs``, the gate's ``matmul_fp32_ms`` / ``matmul_bf16_ms``, ``width``, ``threads`` and ``probe_ms``; without
    the step numbers (and with ``reason``) when the gate stopped it. ``threads``: the torch threads it
    runs on (default one: the kernels' bf16 / fp32 ratio, steady on a machine shared with other jobs,
    where a multi-threaded step waits for descheduled threads; None: the current setting), restored
    after; ``run_threads`` is the setting it found.
    """
    run_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return {**_probe(repeats, width, margin), "run_threads": run_threads}
    finally:
        torch.set_num_threads(run_threads)


def _probe(repeats: int, width: int, margin: float) -> dict[str, Any]:
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, width, generator=gen)
    b = torch.randn(width, width, generator=gen)
    a16, b16 = a.bfloat16(), b.bfloat16()
    mm32 = _best_time(lambda: a @ b, 5)
    mm16 = _best_time(lambda: a16 @ b16, 5)
    out: dict[str, Any] = {
        "width": width,
        "threads": torch.get_num_threads(),
        "matmul_fp32_ms": mm32 * 1e3,
        "matmul_bf16_ms": mm16 * 1e3,
        "margin": margin,
    }
    if mm16 > MATMUL_GATE * mm32:
        out["reason"] = f"bf16 matmul {mm16 / mm32:.0f}x slower than fp32 (no native bf16); step not probed"
        out["probe_ms"] = (time.perf_counter() - start) * 1e3
        return out
    heads = width // 64 if width % 64 == 0 else 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        block = _Block(width, heads)
    x = torch.randn(BATCH, SEQ, width, generator=gen, requires_grad=True)

    def step(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = block(x)
        y.float().square().mean().backward()  # outside autocast, as Lightning's backward
        block.zero_grad(set_to_none=True)
        x.grad = None
        return time.perf_counter() - t0

    step(False), step(True)  # warm-up: kernels chosen, buffers allocated
    pairs: list[tuple[float, float]] = []
    measuring = time.perf_counter()
    while len(pairs) < MAX_PAIRS and (
        len(pairs) < repeats or time.perf_counter() - measuring < MIN_MEASURE_S
    ):
        pairs.append((step(False), step(True)))
    fp32 = statistics.median(p[0] for p in pairs)
    bf16 = statistics.median(p[1] for p in pairs)
    out.update(
        fp32_step_ms=fp32 * 1e3,
        bf16_step_ms=bf16 * 1e3,
        bf16_speedup=statistics.median(f / b for f, b in pairs),
        pairs=len(pairs),
    )
    out["probe_ms"] = (time.perf_counter() - start) * 1e3
    return out


def _device(accelerator: str | None, cuda_available: bool) -> str:
    accelerator = (accelerator or "auto").lower()
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda_available):
        return "cuda"
    return "cpu" if accelerator in ("auto", "cpu") else accelerator


def resolve_precision(
    value: Any,
    accelerator: str | None = "auto",
    *,
    width: int | None = None,
    policy_dtype: str | None = None,
    probe: Callable[[], dict[str, Any]] | None = None,
    cuda_available: bool | None = None,
    bf16_supported: Callable[[], bool] | None = None,
    margin: float = MARGIN,
) -> Resolved:
    """The concrete Lightning precision for ``value`` (a ``trainer.precision``) on ``accelerator``.

    Args:
        value: ``auto``, or any Lightning precision (returned unchanged, as a string).
        accelerator: the trainer's ``accelerator`` (``cpu``, ``gpu``/``cuda``, ``auto``, ...).
        width: the probed block's width, e.g. the LLM's hidden size (default ``WIDTH``).
        policy_dtype: the strategy's own compute dtype (``trainer=fsdp``'s ``param_dtype``): then
            ``32-true``, since Lightning must not autocast on top of it.
        probe: returns the CPU measurements (default: :func:`probe_cpu`, measured once per process and
            width); tests inject fixed timings.
        cuda_available, bf16_supported: default ``torch.cuda.is_available`` / ``is_bf16_supported``.
        margin: how many times faster than fp32 the bf16 step must be.
    """
    requested = str(value)
    if requested != AUTO:
        return Resolved(requested, requested, str(accelerator or "auto"))
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    device = _device(accelerator, cuda_available)
    if policy_dtype:
        reason = f"the strategy computes in {policy_dtype} itself: no autocast on top"
        return Resolved(FP32, AUTO, device, {"reason": reason})
    if device == "cuda":
        if not cuda_available:
            return Resolved(FP32, AUTO, device, {"reason": "CUDA asked for but not available"})
        if (bf16_supported or torch.cuda.is_bf16_supported)():
            return Resolved(BF16, AUTO, device, {"reason": "CUDA with bf16 (tensor cores): no probe"})
        return Resolved(FP32, AUTO, device, {"reason": "CUDA without bf16 support"})
    if device != "cpu":
        return Resolved(FP32, AUTO, device, {"reason": f"no probe for accelerator {device}"})
    width = int(width or WIDTH)
    if probe is not None:
        return _from_probe(probe(), margin)
    key = f"cpu:{width}:{margin}"
    if key not in _CACHE:
        inherited = json.loads(os.environ.get(_ENV) or "{}")
        if inherited.get("key") == key:  # a rank started by Lightning's launcher: the parent's choice
            _CACHE[key] = Resolved(**inherited["resolved"])
        else:
            _CACHE[key] = _from_probe(probe_cpu(width=width, margin=margin), margin)
            os.environ[_ENV] = json.dumps({"key": key, "resolved": asdict(_CACHE[key])})
    return _CACHE[key]


def _from_probe(m: dict[str, Any], margin: float) -> Resolved:
    if "fp32_step_ms" not in m or "bf16_step_ms" not in m:
        return Resolved(FP32, AUTO, "cpu", {"reason": "bf16 not probed", **m})
    speedup = m.get("bf16_speedup") or m["fp32_step_ms"] / m["bf16_step_ms"]
    m = {**m, "bf16_speedup": speedup, "margin": margin}
    return Resolved(BF16 if speedup >= margin else FP32, AUTO, "cpu", m)
