"""Step cost with stored teacher targets against the live teacher, base-size teacher.

all-mpnet-base-v2 (MPNet, 12 x 768) into a 3 x 384 student (BERT layout, 12 heads),
the default objective (10 x embedding MSE + hidden-state MSE) on batches of 32 x 64
real tokens, AdamW as the trainer builds it. Two `Distiller` train steps are timed in
interleaved rounds in one process, so their ratio holds on a shared machine: the live
step (the teacher's forward in every step) and the step on stored targets (the batch
carries the teacher's float16 hidden states and embedding, as `distill --data` with
`prepare --targets embedding,hidden` feeds it; the teacher does not run). Also timed:
the teacher's float32 forward over one batch, the cost per row of `prepare --targets`,
paid once.

    ./dev setup --teacher mpnet
    .venv/bin/python benchmarks/stored_targets.py [--rounds 5] [--precision auto] [--jit-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="default: the assembled MPNet folder")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--precision", default="auto",
                        choices=("auto", "float32", "mixed_bfloat16"))
    parser.add_argument("--jit-compile", action="store_true",
                        help="compile both steps with XLA (what distill does in float32 on "
                             "one device; off: oneDNN, what it does in bfloat16 on a CPU)")
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from tf_minilm.assets import mpnet_teacher_dir
    from tf_minilm.distill.optimizer import make_optimizer, no_decay_variables
    from tf_minilm.distill.options import TrainOptions
    from tf_minilm.distill.runtime import resolve_precision, resolve_strategy
    from tf_minilm.distill.trainer import make_distiller
    from tf_minilm.hf.checkpoints import load_hf_checkpoint
    from tf_minilm.model.pooling import read_pooling, sentence_embedding
    from tf_minilm.model.student import build_student

    teacher_dir = mpnet_teacher_dir(args.teacher)
    pooling = read_pooling(teacher_dir)
    policy = resolve_precision(args.precision, resolve_strategy("default"))
    rng = np.random.default_rng(0)

    # The targets, as prepare computes them: the float32 teacher, stored in float16.
    fp32_teacher, tokenizer = load_hf_checkpoint(teacher_dir, dtype="float32")
    vocab = tokenizer.get_vocab_size()
    ids = rng.integers(1000, vocab - 1, (args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    forward = tf.function(lambda b: fp32_teacher(b, training=False)["last_hidden_state"])
    forward(batch)
    start = time.perf_counter()
    hidden = forward(batch).numpy()
    prepare_seconds = time.perf_counter() - start
    stored = {"teacher_hidden": hidden.astype(np.float16).astype(np.float32),
              "teacher_embedding": np.asarray(sentence_embedding(hidden, mask, pooling))
              .astype(np.float16).astype(np.float32)}

    keras.mixed_precision.set_global_policy(policy)
    teacher, _ = load_hf_checkpoint(teacher_dir)
    student = build_student(teacher, 3, 384, 12, 1536, init="random", seed=0, layout="bert")
    spec = TrainOptions(steps=1000).resolve().replace(pooling=pooling)
    distiller = make_distiller(teacher, student, spec)
    distiller.compile(optimizer=make_optimizer(
        6e-4, weight_decay=0.01, no_decay=no_decay_variables(distiller.all_stage_variables)),
        jit_compile=args.jit_compile)
    feeds = {"live": batch, "stored": {**batch, **stored}}
    assert not distiller.stored_targets_serve(batch)
    assert distiller.stored_targets_serve(feeds["stored"])
    for feed in feeds.values():  # trace both signatures
        distiller.train_on_batch(feed, return_dict=True)
    times: dict[str, list[float]] = {name: [] for name in feeds}
    for _ in range(args.rounds):
        for name, feed in feeds.items():
            for _ in range(args.steps_per_round):
                start = time.perf_counter()
                distiller.train_on_batch(feed, return_dict=True)
                times[name].append(time.perf_counter() - start)
    live, on_targets = (statistics.median(times[name]) for name in ("live", "stored"))
    print(json.dumps({
        "precision": policy, "jit_compile": args.jit_compile, "batch": [args.batch, args.seq],
        "live_step_ms": round(1000 * live, 1), "stored_targets_step_ms": round(1000 * on_targets, 1),
        "stored_over_live": round(on_targets / live, 3),
        "prepare_ms_per_row_float32": round(1000 * prepare_seconds / args.batch, 2),
        "steps_timed_each": len(times["live"])}, indent=2))


if __name__ == "__main__":
    main()
