"""Tiny models, step-indexed data and a subprocess entry point for the distillation tests.

Imported by tests/test_distiller.py and tests/test_train.py (tiny builders), and run
as a script by the tests that need a fresh process (logical CPU devices must be set
before TensorFlow initialises, multi-worker needs one process per worker, and the
crash test kills a process):

    python tests/_multiworker_worker.py MODE JSON_ARGS

MODE is one of:
    mirrored-step  one optimizer step on 2 logical CPUs under MirroredStrategy and on one
                   device; prints {"max_abs_diff": ..., "clip_active": ...} as JSON.
    train          run_distillation with the options in JSON_ARGS; writes the final student
                   variables to JSON_ARGS["weights_out"] (npz). With "hang_at": N it writes
                   JSON_ARGS["marker"] after global step N and sleeps (to be killed); with
                   "crash_at": N it hard-exits (status 3) after step N; with
                   "logical_cpus": K it first splits the CPU into K logical devices; with
                   "first": ARGS it first runs the train mode on ARGS (printed as
                   RESULT-FIRST), e.g. the uninterrupted run a crash is compared with.
"""

from __future__ import annotations

import json
import os
import sys
import time

if os.environ.get("TF_MINILM_TEST_FULL_TRACEBACK"):
    import keras
    keras.config.disable_traceback_filtering()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VOCAB = 100
SEQ = 16
BATCH = 8


def teacher_config(dropout: float = 0.1):
    from tf_minilm.model.config import EncoderConfig

    return EncoderConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )


def randomize(encoder, seed: int, stddev: float) -> None:
    """Give every matrix of `encoder` independent N(0, stddev) values (1-D weights untouched)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for variable in encoder.weights:
        if len(variable.shape) >= 2:
            variable.assign(rng.normal(0.0, stddev, variable.shape).astype("float32"))


def tiny_teacher(seed: int = 0, dropout: float = 0.1):
    """A 2 x 32 teacher (4 heads) with random weights large enough for peaked relations."""
    from tf_minilm.model.encoder import Encoder

    teacher = Encoder(teacher_config(dropout), name="teacher")
    randomize(teacher, seed, 0.15)
    return teacher


def tiny_student(teacher, seed: int = 1, layers: int = 2, hidden: int = 16, heads: int = 2):
    """A student of `teacher` (default 2 x 16, 2 heads, FFN 64), BERT-like random weights."""
    from tf_minilm.model.student import build_student

    student = build_student(teacher, layers, hidden, heads, seed=seed)
    randomize(student, seed, 0.02)
    return student


def batch_for_step(step, seed: int = 0, batch: int = BATCH, seq: int = SEQ):
    """The global batch of `step`: a pure function of (seed, step); lengths 4..seq."""
    import tensorflow as tf

    step = tf.cast(step, tf.int32)
    ids = tf.random.stateless_uniform([batch, seq], seed=[seed, step], minval=5, maxval=VOCAB,
                                      dtype=tf.int32)
    lengths = tf.random.stateless_uniform([batch, 1], seed=[seed + 1, step], minval=4,
                                          maxval=seq + 1, dtype=tf.int32)
    mask = tf.cast(tf.range(seq)[tf.newaxis, :] < lengths, tf.int32)
    return {"input_ids": ids * mask, "attention_mask": mask,
            "token_type_ids": tf.zeros_like(ids)}


def make_dataset(start_step: int, seed: int = 0, batch: int = BATCH, seq: int = SEQ):
    """Global batches from `start_step` on, forever."""
    import tensorflow as tf

    steps = tf.data.Dataset.range(start_step, 2**31 - 1)
    return steps.map(lambda step: batch_for_step(step, seed, batch, seq))


def eval_dataset(batches: int = 4, seed: int = 12345):
    import tensorflow as tf

    return tf.data.Dataset.range(batches).map(lambda step: batch_for_step(step, seed))


def student_arrays(student) -> dict:
    return {f"{i:04d}": v.numpy() for i, v in enumerate(student.weights)}


# --------------------------------------------------------------------------- modes
def _mirrored_step(args: dict) -> dict:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np

    from tf_minilm.distill.distiller import Distiller
    from tf_minilm.distill.optimizer import make_optimizer, no_decay_variables
    from tf_minilm.distill.runtime import resolve_strategy
    from tf_minilm.schedules import WarmupLinearDecay

    def one_step(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            teacher = tiny_teacher(0, dropout=0.0)
            student = tiny_student(teacher, 1)
            distiller = Distiller(teacher, student, num_relation_heads=4,
                                  clipnorm=args.get("clipnorm"))
            optimizer = make_optimizer(WarmupLinearDecay(1e-2, 0, 10), weight_decay=0.01,
                                       no_decay=no_decay_variables(student))
            distiller.compile(optimizer=optimizer)
        batch = batch_for_step(0)
        grads_norm = None
        if args.get("clipnorm"):
            with tf.GradientTape() as tape:
                loss = distiller.compute_losses(batch, training=True)["loss"]
            grads = tape.gradient(loss, distiller.trainable_weights)
            grads_norm = float(tf.linalg.global_norm([tf.convert_to_tensor(g) for g in grads]))
        dataset = tf.data.Dataset.from_tensors(batch)
        logs = distiller.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0).history
        return [v.numpy() for v in student.weights], logs, grads_norm

    strategy = resolve_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2, strategy.extended.worker_devices
    mirrored, mirrored_logs, _ = one_step(strategy)
    single, single_logs, norm = one_step(tf.distribute.get_strategy())
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(mirrored, single, strict=True))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(
        single, [v.numpy() for v in tiny_student(tiny_teacher(0, 0.0), 1).weights], strict=True))
    return {"max_abs_diff": diff, "replicas": 2, "moved": moved,
            "loss_mirrored": mirrored_logs["loss"][0], "loss_single": single_logs["loss"][0],
            "grad_norm": norm, "clipnorm": args.get("clipnorm")}


class _HangAt:
    """Callback: after global step `step`, write `marker` and sleep until killed."""

    def __new__(cls, step: int, marker: str, initial_step: int):
        import keras

        class Hang(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.global_step = initial_step

            def on_train_batch_end(self, batch, logs=None):
                self.global_step += 1
                if self.global_step == step:
                    with open(marker, "w") as handle:
                        handle.write(str(step))
                    time.sleep(3600)

        return Hang()


class _CrashAt:
    """Callback: hard-exit the process (no cleanup, like a kill) after global step `step`."""

    def __new__(cls, step: int, initial_step: int):
        import keras

        class Crash(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.global_step = initial_step

            def on_train_batch_end(self, batch, logs=None):
                self.global_step += 1
                if self.global_step == step:
                    os._exit(3)

        return Crash()


def train(args: dict) -> dict:
    """The train mode (see the module docstring); also called in-process by the tests."""
    if args.get("first"):
        # Another run in this process before this one (the uninterrupted reference of a
        # run that is then killed here): one fresh TensorFlow process fewer per test.
        first = train(args["first"])
        print("RESULT-FIRST " + json.dumps(first), flush=True)
    if args.get("logical_cpus"):
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        if tf.config.get_logical_device_configuration(cpu) is None:  # set once a process
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * args["logical_cpus"])
    import numpy as np

    from tf_minilm.distill.options import TrainOptions
    from tf_minilm.distill.state import CheckpointManager
    from tf_minilm.distill.trainer import run_distillation

    options = TrainOptions(**args["options"])
    dropout = args.get("dropout", 0.1)

    def build():
        teacher = tiny_teacher(0, dropout=dropout)
        return teacher, tiny_student(teacher, 1)

    callbacks = []
    latest = CheckpointManager(os.path.join(args["output_dir"], "checkpoints")).checkpoints()
    start = latest[-1][0] if latest and options.resume else 0
    if args.get("hang_at"):
        callbacks.append(_HangAt(args["hang_at"], args["marker"], start))
    if args.get("crash_at"):
        callbacks.append(_CrashAt(args["crash_at"], start))
    result = run_distillation(
        build, lambda start: make_dataset(start, args.get("data_seed", 0)), args["output_dir"],
        options, callbacks=callbacks, verbose=0,
    )
    if args.get("weights_out") and result.checkpoint is not None:
        np.savez(args["weights_out"], **student_arrays(result.student))
    return {"step": result.step, "train_metrics": result.train_metrics,
            "replicas": result.strategy.num_replicas_in_sync,
            "checkpoint": result.checkpoint}


def main(argv: list[str]) -> int:
    mode, args = argv[1], json.loads(argv[2]) if len(argv) > 2 else {}
    if mode == "mirrored-step":
        out = _mirrored_step(args)
    elif mode == "train":
        out = train(args)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(sys.argv))
