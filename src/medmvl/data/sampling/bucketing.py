"""Length-bucketed batches (``data.bucket_by_length=true``): samples of similar length batched together.

Why: a right-padded batch is as wide as its longest sample, so random batches of a mix with varied prompt
and answer lengths are a quarter padding or more. Packing (``medmvl.data.packing``) removes padding too,
but on CPU / SDPA a packed row pays dense attention over its whole width; bucketing keeps one sample per
row and makes the rows nearly equal instead. Measured on this project's 2-core CPU
(``experiments/bench``): bucketed batches were the fastest layout (docs/efficiency.md).

The order stays a pure function of ``(seed, epoch)``: each window of ``window * batch_size`` consecutive
indices of the (already shuffled, per-rank) epoch order is sorted by length and cut into batches, and
the full batches of the window are shuffled; a final partial batch stays last. The training loader can
then still resume mid-epoch by skipping whole batches (``medmvl.data.sampling.resumable``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class LengthBuckets:
    """Rearrange an epoch order into length-sorted batches (see the module docstring).

    Args:
        lengths: Token length of every dataset index.
        batch_size: Samples per batch (the loader's).
        seed: Seed of the batch shuffle (with the epoch).
        window: Batches per sorting window: larger pads less, keeps less of the shuffle.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, window: int = 32) -> None:
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size and window must be >= 1, got {batch_size}, {window}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.seed, self.window = batch_size, seed, window

    def __call__(self, order: Sequence[int], epoch: int) -> list[int]:
        """``order`` (dataset indices) rearranged; the same multiset, batch boundaries every ``batch_size``."""
        rng = np.random.default_rng([self.seed, epoch, 7])
        span = self.window * self.batch_size
        out: list[int] = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches = [chunk[k : k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
            full = [b for b in batches if len(b) == self.batch_size]
            rest = [b for b in batches if len(b) < self.batch_size]
            for k in rng.permutation(len(full)):
                out.extend(full[k])
            for b in rest:
                out.extend(b)
        return out
