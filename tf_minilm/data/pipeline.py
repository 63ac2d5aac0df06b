"""Training batches as `tf.data`: the schedule's rows, batched, sharded over workers.

Owns: `make_dataset` (global batches from any start step, each worker its slice) and
`make_eval_dataset`, both optionally with the rows' stored teacher targets
(`data.targets`). TensorFlow is imported inside them only. Imports: NumPy,
`data.schedule`, `data.packing`, `data.shards`, `data.corpus`, `data.targets`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from tf_minilm.data.corpus import CorpusError
from tf_minilm.data.packing import Sequences
from tf_minilm.data.schedule import BatchSchedule, shard_batch_size
from tf_minilm.data.shards import ShardedRows
from tf_minilm.data.targets import StoredTargets

if TYPE_CHECKING:
    import tensorflow as tf

logger = logging.getLogger(__name__)


def _batch_dict(tf: Any, ids: Any, mask: Any) -> dict[str, Any]:
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tf.zeros_like(ids)}


def make_dataset(
    sequences: Sequences | ShardedRows,
    global_batch_size: int,
    *,
    seed: int = 0,
    start_step: int = 0,
    num_steps: int | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    shuffle: bool = True,
    targets: StoredTargets | None = None,
) -> tf.data.Dataset:
    """Training batches in the order of `BatchSchedule`, from `start_step` on.

    Element `k` is the batch of global step `start_step + k` (restricted to
    this shard), so a run resumed with `start_step=s` sees exactly what a run
    from step 0 sees from its step s on. The dataset repeats epochs forever
    unless `num_steps` is given; rows are gathered in NumPy (no copy of the
    corpus inside the TensorFlow graph) and prefetched.

    Args:
        sequences: training rows: `PreparedCorpus.train` (memory-mapped shards,
            `data.shards.ShardedRows`) or in-memory `Sequences`; only the rows of the
            batches in flight are read.
        global_batch_size: rows per step over all shards.
        seed: shuffling seed.
        start_step: first global step to produce (0 for a fresh run).
        num_steps: produce this many steps, or forever if None.
        num_shards: number of input pipelines (workers).
        shard_index: which slice of every global batch this pipeline yields.
        shuffle: shuffle each epoch.
        targets: the rows' stored teacher targets (`sequences` must be the prepared
            directory's `ShardedRows`): each batch also holds `teacher_embedding`
            [batch, hidden] and/or `teacher_hidden` [batch, max_seq_len, hidden], float32.

    Returns:
        A `tf.data.Dataset` of dicts `input_ids`, `attention_mask`,
        `token_type_ids`, each int32 [global_batch_size // num_shards,
        max_seq_len]. Its auto-sharding policy is OFF, for sharding here: with
        `distribute_datasets_from_function` pass
        `num_shards=input_context.num_input_pipelines`,
        `shard_index=input_context.input_pipeline_id`. `run_distillation` takes the
        global batches instead (`num_shards=1`) and sets the policy to DATA, so Keras
        splits each global batch over workers and replicas.

    Raises:
        CorpusError: bad batch size, shard, step or seed.

    Example:
    >>> rows = Sequences.from_lengths(np.arange(40).reshape(10, 4), np.full(10, 4))
    >>> ds = make_dataset(rows, 4, seed=1, num_steps=3)
    >>> [b["input_ids"].shape.as_list() for b in ds]
    [[4, 4], [4, 4], [4, 4]]
    """
    import tensorflow as tf

    schedule = BatchSchedule(len(sequences), global_batch_size, seed, shuffle)
    per_shard = shard_batch_size(global_batch_size, num_shards, shard_index)
    if start_step < 0:
        raise CorpusError(f"start_step={start_step} must be non-negative")
    if num_steps is not None and num_steps < 0:
        raise CorpusError(f"num_steps={num_steps} must be non-negative or None")
    max_seq_len = sequences.max_seq_len
    if targets is not None and not isinstance(sequences, ShardedRows):
        raise CorpusError("stored targets go with the rows of a prepared directory "
                          "(ShardedRows), not in-memory sequences")
    target_names = [name for name, kind in (("teacher_embedding", "embedding"),
                                            ("teacher_hidden", "hidden"))
                    if targets is not None and kind in targets.kinds]

    def gather(step: np.ndarray) -> tuple[np.ndarray, ...]:
        indices = schedule.rows(int(step), num_shards, shard_index)
        ids, mask = sequences.gather(indices)
        if not target_names:
            return ids, mask
        stored = targets.gather(sequences.global_rows(indices), max_seq_len)
        return (ids, mask, *(stored[name] for name in target_names))

    def load(step: tf.Tensor) -> dict[str, tf.Tensor]:
        kinds = (tf.int32, tf.int32) + (tf.float32,) * len(target_names)
        ids, mask, *stored = tf.numpy_function(gather, [step], kinds, stateful=False)
        ids.set_shape([per_shard, max_seq_len])
        mask.set_shape([per_shard, max_seq_len])
        batch = _batch_dict(tf, ids, mask)
        for name, value in zip(target_names, stored, strict=True):
            value.set_shape([per_shard, max_seq_len, targets.hidden_size]
                            if name == "teacher_hidden" else [per_shard, targets.hidden_size])
            batch[name] = value
        return batch

    if num_steps is None:
        ds = tf.data.Dataset.counter(start_step)  # infinite cardinality: Keras needs steps
    else:
        ds = tf.data.Dataset.range(start_step, start_step + num_steps)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    return ds.with_options(options)


def make_eval_dataset(sequences: Sequences, batch_size: int,
                      targets: dict[str, np.ndarray] | None = None) -> tf.data.Dataset:
    """Evaluation batches: all rows once, in order, the last batch possibly smaller.

    Args:
        sequences: evaluation rows (`PreparedCorpus.eval`).
        batch_size: rows per batch.
        targets: the rows' stored teacher targets (`StoredTargets.gather` of the held-out
            rows), added to each batch under their names.

    Returns:
        A finite `tf.data.Dataset` of the same dicts as `make_dataset`.

    Raises:
        CorpusError: no rows or a bad batch size.
    """
    import tensorflow as tf

    if batch_size < 1:
        raise CorpusError(f"batch_size={batch_size} must be positive")
    if len(sequences) == 0:
        raise CorpusError("no evaluation sequences (eval_fraction=0?)")
    if targets:
        ds = tf.data.Dataset.from_tensor_slices(
            (sequences.input_ids, sequences.attention_mask, dict(targets)))
        ds = ds.batch(batch_size).map(
            lambda ids, mask, extra: {**_batch_dict(tf, ids, mask), **extra})
    else:
        ds = tf.data.Dataset.from_tensor_slices((sequences.input_ids, sequences.attention_mask))
        ds = ds.batch(batch_size).map(lambda ids, mask: _batch_dict(tf, ids, mask))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


