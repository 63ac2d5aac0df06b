"""Sweep int8 quantization configs of the fused all-MiniLM-L6-v2 graph: cosine and speed.

For each config an int8 model is written from the fused float32 export and compared
with it on the export's validation sentences (one right-padded batch, as
`export.validate` does; the float32 graph matches Keras to 1e-4), giving the min and
mean cosine of the sentence embeddings, plus the min over the same sentences run one
at a time (batch 1, the serving case). Speed: batch 1, seq 128, interleaved rounds of
the float32 model and the candidate in the same process and thread count; the ratio is
the median of the per-round fp32/int8 median latencies.

    .venv/bin/python benchmarks/int8_sweep.py --workdir /tmp/q8 --threads 2
    .venv/bin/python benchmarks/int8_sweep.py --configs dyn_pc,smooth_a0.5 --rounds 30
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from tf_minilm.assets import default_teacher_dir  # noqa: E402
from tf_minilm.data.corpus import bbc_news_path  # noqa: E402


def bbc_texts(count: int, seed: int = 0) -> list[str]:
    """`count` BBC sentences, headlines and short fragments (1-4 words), deterministic."""
    root = bbc_news_path()
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                   if f.endswith(".txt"))
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for path in rng.choice(files, size=min(len(files), count), replace=False):
        with open(path, encoding="latin-1") as handle:
            lines = [line.strip() for line in handle if line.strip()]
        if not lines:
            continue
        sentences = [s for line in lines[1:] for s in re.split(r"(?<=[.!?])\s+", line) if s]
        pick = int(rng.integers(3))
        if pick == 0 or not sentences:
            texts.append(lines[0])  # headline
        elif pick == 1:
            texts.append(str(rng.choice(sentences)))
        else:
            words = str(rng.choice(sentences)).split()
            texts.append(" ".join(words[: int(rng.integers(1, 5))]))
    return texts[:count]


def session(path: str, threads: int):
    from serving.runtime import make_session

    return make_session(path, threads)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def accuracy(fp32, cand, batch, singles) -> dict[str, float]:
    out = ["sentence_embedding"]
    ref = fp32.run(out, batch)[0]
    got = cand.run(out, batch)[0]
    c = cosines(ref, got)
    single = [cosines(fp32.run(out, f)[0], cand.run(out, f)[0])[0] for f in singles]
    return {"min": float(c.min()), "mean": float(c.mean()), "min_b1": float(min(single)),
            "worst": int(c.argmin())}


def speed(fp32, cand, threads_feeds, rounds: int, per_round: int) -> tuple[float, float, float]:
    feeds = threads_feeds
    for s in (fp32, cand):
        for _ in range(5):
            s.run(["sentence_embedding"], feeds)
    ratios, t32, t8 = [], [], []
    for _ in range(rounds):
        medians = []
        for s in (fp32, cand):
            times = []
            for _ in range(per_round):
                start = time.perf_counter()
                s.run(["sentence_embedding"], feeds)
                times.append(time.perf_counter() - start)
            medians.append(np.median(times) * 1e3)
        t32.append(medians[0])
        t8.append(medians[1])
        ratios.append(medians[0] / medians[1])
    return float(np.median(ratios)), float(np.median(t32)), float(np.median(t8))


def build_configs(fp32_path: str, workdir: str, calib_feeds: list[dict]) -> dict[str, Callable]:
    """name -> function(destination) writing the int8 model."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.smoothing import smooth_onnx

    def dynamic(dst, src=fp32_path, per_channel=True, weight_type=QuantType.QInt8, exclude=(),
                op_types=None, extra=None, reduce_range=False):
        options = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        options.update(extra or {})
        quantize_dynamic(src, dst, per_channel=per_channel, weight_type=weight_type,
                         reduce_range=reduce_range,
                         nodes_to_exclude=list(exclude) or None,
                         op_types_to_quantize=list(op_types) if op_types else None,
                         extra_options=options)

    def smoothed(alpha, kinds=None, **kw):
        def make(dst):
            from export.smoothing import KINDS
            tmp = os.path.join(workdir, f"smooth_{alpha}_{'-'.join(kinds or ['all'])}.onnx")
            smooth_onnx(fp32_path, tmp, calib_feeds, alpha=alpha, kinds=kinds or KINDS)
            dynamic(dst, src=tmp, **kw)
        return make

    model = onnx.load(fp32_path, load_external_data=False)
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    ffn_out = [n for n in matmuls if any(
        p.op_type == "BiasGelu" and p.output[0] in
        next(m for m in model.graph.node if m.name == n).input for p in model.graph.node)]
    configs: dict[str, Callable] = {
        "dyn_pc": lambda d: dynamic(d),
        "dyn_pt": lambda d: dynamic(d, per_channel=False),
        "dyn_pc_actsym": lambda d: dynamic(d, extra={"ActivationSymmetric": True}),
        "dyn_pc_u8": lambda d: dynamic(d, weight_type=QuantType.QUInt8),
        "dyn_pc_rr": lambda d: dynamic(d, reduce_range=True),
        "dyn_pc_matmul_only": lambda d: dynamic(d, op_types=["MatMul"]),
        "dyn_pc_no_emb": lambda d: dynamic(d, op_types=["MatMul", "Attention"]),
        "dyn_pc_attn_only": lambda d: dynamic(d, op_types=["Attention"]),
        "dyn_pc_ex_ffnout_last": lambda d: dynamic(d, exclude=ffn_out[-1:]),
        "dyn_pc_ex_ffnout_first": lambda d: dynamic(d, exclude=ffn_out[:1]),
        "dyn_pc_ex_ffnout_all": lambda d: dynamic(d, exclude=ffn_out),
    }
    for alpha in (0.3, 0.5, 0.65, 0.7, 0.8):
        configs[f"smooth_a{alpha}"] = smoothed(alpha)
    for alpha in (0.5, 0.65, 0.7, 0.8):
        configs[f"smooth_a{alpha}_u8"] = smoothed(alpha, weight_type=QuantType.QUInt8)
        configs[f"smooth_a{alpha}_rr"] = smoothed(alpha, reduce_range=True)
    configs["smooth_a0.7_u8_ex_ffnout12"] = smoothed(0.7, weight_type=QuantType.QUInt8,
                                                      exclude=ffn_out[:2])
    configs["smooth_a0.7_u8_ex_ffnout123"] = smoothed(0.7, weight_type=QuantType.QUInt8,
                                                       exclude=ffn_out[:3])
    configs["smooth_a0.5_ln_only"] = smoothed(0.5, ["ln_attention", "ln_matmul"])
    configs["smooth_a0.5_gelu_only"] = smoothed(0.5, ["gelu_matmul"])
    configs["smooth_a0.5_attn_out_only"] = smoothed(0.5, ["attention_matmul"])
    return configs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/int8-sweep", help="scratch folder")
    parser.add_argument("--configs", default="", help="comma-separated subset (default all)")
    parser.add_argument("--calib", type=int, default=200, help="BBC calibration texts")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--per-round", type=int, default=10, help="runs per model per round")
    parser.add_argument("--no-speed", action="store_true", help="accuracy only")
    args = parser.parse_args()

    from export.validate import VALIDATION_SENTENCES, tokenize
    from tf_minilm.hf.tokenizer import load_tokenizer

    os.makedirs(args.workdir, exist_ok=True)
    fp32_path = os.path.join(args.workdir, "teacher", "model.onnx")
    if not os.path.exists(fp32_path):
        from export.pipeline import export_model

        export_model(default_teacher_dir(), os.path.join(args.workdir, "teacher"), quantize="none")
    tokenizer = load_tokenizer(default_teacher_dir())
    batch = tokenize(tokenizer, VALIDATION_SENTENCES, 128, 0)
    singles = [tokenize(tokenizer, (t,), 128, 0) for t in VALIDATION_SENTENCES]
    calib_texts = bbc_texts(args.calib)
    calib_feeds = [tokenize(tokenizer, calib_texts[i:i + 16], 128, 0)
                   for i in range(0, len(calib_texts), 16)]
    rng = np.random.default_rng(0)
    timing_feeds = {"input_ids": rng.integers(1000, 29000, (1, 128)).astype(np.int64),
                    "attention_mask": np.ones((1, 128), np.int64),
                    "token_type_ids": np.zeros((1, 128), np.int64)}

    configs = build_configs(fp32_path, args.workdir, calib_feeds)
    names = [c for c in args.configs.split(",") if c] or list(configs)
    fp32 = session(fp32_path, args.threads)
    rows = []
    print(f"{'config':28s} {'min_cos':>8s} {'mean_cos':>8s} {'min_b1':>8s} {'worst':>6s} "
          f"{'speedup':>7s} {'fp32_ms':>7s} {'int8_ms':>7s}", flush=True)
    for name in names:
        dst = os.path.join(args.workdir, f"{name}.onnx")
        configs[name](dst)
        cand = session(dst, args.threads)
        acc = accuracy(fp32, cand, batch, singles)
        ratio = t32 = t8 = float("nan")
        if not args.no_speed:
            ratio, t32, t8 = speed(fp32, cand, timing_feeds, args.rounds, args.per_round)
        worst = VALIDATION_SENTENCES[acc["worst"]][:6]
        rows.append((name, acc, ratio))
        print(f"{name:28s} {acc['min']:8.4f} {acc['mean']:8.4f} {acc['min_b1']:8.4f} "
              f"{worst:>6s} {ratio:7.2f} {t32:7.2f} {t8:7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
