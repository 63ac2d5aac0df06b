"""Which rows form the batch of each global step: a pure function of (seed, step).

Owns: `BatchSchedule` (epoch permutations drawn from the seed, so a run resumed at step
s sees exactly the batches a run from 0 would) and how a global batch splits over
workers. Imports: NumPy and `data.corpus` (its `CorpusError`).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import numpy as np

from tf_minilm.data.corpus import (
    CorpusError,
)

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)


MAX_SEED = 2**32 - 1
"""Largest seed every consumer takes (Keras' `set_random_seed`, NumPy, TensorFlow)."""


def check_seed(seed: int, name: str = "seed") -> int:
    """The one seed rule: an integer in [0, 2**32 - 1] (it seeds data order and weights).

    Raises:
        CorpusError: anything else; the message names `name`.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed <= MAX_SEED:
        raise CorpusError(f"{name}={seed!r} must be an integer in [0, {MAX_SEED}]")
    return int(seed)


class BatchSchedule:
    """Which rows make up the batch of every global step: a pure function of (seed, step).

    Epoch `e` visits the rows in the order `permutation(e)` (drawn from
    `(seed, e)`; the identity when `shuffle=False`); step `s` is batch
    `s % steps_per_epoch` of epoch `s // steps_per_epoch`. The last
    `num_examples % global_batch_size` rows of each epoch's order are dropped.

    Args:
        num_examples: rows in the training set.
        global_batch_size: rows per step over all workers.
        seed: non-negative shuffling seed.
        shuffle: shuffle each epoch (True) or keep row order.

    Example:
    >>> schedule = BatchSchedule(10, 4, seed=0)
    >>> schedule.steps_per_epoch
    2
    >>> len(set(schedule.rows(0)) | set(schedule.rows(1)))
    8
    """

    def __init__(
        self, num_examples: int, global_batch_size: int, seed: int = 0, shuffle: bool = True
    ) -> None:
        if global_batch_size < 1:
            raise CorpusError(f"global_batch_size={global_batch_size} must be positive")
        if num_examples < global_batch_size:
            raise CorpusError(
                f"the training set has {num_examples} sequences, fewer than one global batch "
                f"of {global_batch_size}; use a smaller batch or a larger corpus"
            )
        self.num_examples = int(num_examples)
        self.global_batch_size = int(global_batch_size)
        self.seed = check_seed(seed)
        self.shuffle = shuffle
        self.steps_per_epoch = self.num_examples // self.global_batch_size
        self._lock = threading.Lock()
        self._cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """The row order of `epoch` (int64 [num_examples])."""
        with self._lock:
            perm = self._cache.get(epoch)
            if perm is None:
                if self.shuffle:
                    seq = np.random.SeedSequence([self.seed, 0x5EED, 1, int(epoch)])
                    perm = np.random.default_rng(seq).permutation(self.num_examples)
                else:
                    perm = np.arange(self.num_examples)
                if len(self._cache) >= 2:
                    self._cache.pop(min(self._cache))
                self._cache[epoch] = perm
            return perm

    def rows(self, step: int, num_shards: int = 1, shard_index: int = 0) -> np.ndarray:
        """Row indices of global step `step`, or of shard `shard_index` of it.

        Shard i of n is the i-th contiguous slice of the global batch, of size
        `global_batch_size // n`.
        """
        if step < 0:
            raise CorpusError(f"step={step} must be non-negative")
        per_shard = shard_batch_size(self.global_batch_size, num_shards, shard_index)
        epoch, index = divmod(int(step), self.steps_per_epoch)
        start = index * self.global_batch_size + shard_index * per_shard
        return self.permutation(epoch)[start:start + per_shard]


def shard_batch_size(global_batch_size: int, num_shards: int, shard_index: int) -> int:
    if num_shards < 1:
        raise CorpusError(f"num_shards={num_shards} must be positive")
    if not 0 <= shard_index < num_shards:
        raise CorpusError(f"shard_index={shard_index} must be in [0, {num_shards})")
    if global_batch_size % num_shards:
        raise CorpusError(
            f"global batch size {global_batch_size} is not divisible by "
            f"num_shards={num_shards}"
        )
    return global_batch_size // num_shards
