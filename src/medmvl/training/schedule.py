"""Learning-rate schedule: linear warmup then cosine decay, sized from the trainer's step count."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cosine_with_warmup(
    optimizer: Optimizer, *, num_training_steps: int, warmup_ratio: float = 0.03, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Multiply every group's LR by a warmup-then-cosine factor.

    Args:
        optimizer: the optimizer.
        num_training_steps: optimizer steps of the whole run (``trainer.estimated_stepping_batches``).
        warmup_ratio: share of steps with linear warmup from 0 (MedM-VL uses 0.03).
        min_lr_ratio: floor of the factor at the end of the cosine.
    """
    warmup = int(round(warmup_ratio * num_training_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, num_training_steps - warmup))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
