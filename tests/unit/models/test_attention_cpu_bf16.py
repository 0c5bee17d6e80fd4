"""``sdpa_packed`` on the CPU: bf16 q/k/v of short sequences are attended in fp32, the output is bf16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import medmvl.models.llm.attention as attention
from medmvl.data.packing import varlen_kwargs


class _Module(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 2  # 4 query heads over 2 key/value heads


def _qkv(b: int, t: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, 4, t, 16, generator=g)
    k, v = torch.randn(b, 2, t, 16, generator=g), torch.randn(b, 2, t, 16, generator=g)
    return tuple(x.to(dtype) for x in (q, k, v))


def _seen_dtypes(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    real = F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append(q.dtype)
        return real(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("packed", [False, True])
def test_short_bf16_runs_in_fp32_and_returns_bf16(monkeypatch: pytest.MonkeyPatch, packed: bool) -> None:
    seen = _seen_dtypes(monkeypatch)
    q, k, v = _qkv(2, 12, torch.bfloat16)
    kwargs = varlen_kwargs(torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]] * 2)) if packed else {}
    out, _ = attention.packed_sdpa_forward(_Module(), q, k, v, None, scaling=0.25, **kwargs)
    ref, _ = attention.packed_sdpa_forward(
        _Module(), q.float(), k.float(), v.float(), None, scaling=0.25, **kwargs
    )
    assert out.dtype == torch.bfloat16 and set(seen) == {torch.float32}
    torch.testing.assert_close(out, ref.bfloat16())


def test_long_or_fp32_inputs_are_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _seen_dtypes(monkeypatch)
    monkeypatch.setattr(attention, "CPU_FP32_MAX_LEN", 8)
    q, k, v = _qkv(1, 12, torch.bfloat16)  # longer than the limit: bf16 kernels
    out, _ = attention.packed_sdpa_forward(_Module(), q, k, v, None, scaling=0.25)
    assert out.dtype == torch.bfloat16 and seen == [torch.bfloat16]
    seen.clear()
    q, k, v = _qkv(1, 4, torch.float32)
    out, _ = attention.packed_sdpa_forward(_Module(), q, k, v, None, scaling=0.25)
    assert out.dtype == torch.float32 and seen == [torch.float32]


def test_gradients_flow_back_in_bf16() -> None:
    q, k, v = (x.requires_grad_() for x in _qkv(1, 8, torch.bfloat16))
    out, _ = attention.packed_sdpa_forward(_Module(), q, k, v, None)
    out.float().sum().backward()
    assert all(x.grad is not None and x.grad.dtype == torch.bfloat16 for x in (q, k, v))


def test_bf16_autocast_is_attended_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under autocast q and k arrive in fp32 (RoPE promotes them) and autocast would cast SDPA to bf16."""
    seen = _seen_dtypes(monkeypatch)
    q, k, v = _qkv(2, 12, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attention.packed_sdpa_forward(_Module(), q, k, v.bfloat16(), None, scaling=0.25)
    assert out.dtype == torch.bfloat16 and seen == [torch.float32]
    monkeypatch.setattr(attention, "CPU_FP32_MAX_LEN", 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attention.packed_sdpa_forward(_Module(), q, k, v.bfloat16(), None, scaling=0.25)
    assert out.dtype == torch.bfloat16  # autocast's own bf16 SDPA
