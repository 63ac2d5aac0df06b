"""Would fusing MPNet's attention pay? The exported MPNet graph against two fused rewrites.

`tf-minilm export` leaves an MPNet-layout encoder's attention unfused (MatMul, Softmax
and the relative position bias added beside the padding mask): onnxruntime's BERT
fusion does not match that pattern. onnxruntime has two fused operators that can take
the summed bias (relative position bias + padding mask, [batch, heads, seq, seq], which
the exported graph already computes once for all layers) as their `attention_bias`
input. This benchmark rewrites every layer's attention of an exported `model.onnx` into
each of them and times all graphs in one process, interleaved, batch 1 x `--seq-len`:

- `MultiHeadAttention`: the Q/K/V projections stay MatMul + Add (so int8 quantizes them
  as before); the operator does scores, bias, softmax and the weighted sum.
- `Attention`: the three projections packed into one [H, 3H] weight as well. Its int8
  form (`QAttention`) has no `attention_bias` input, so the quantizer drops the bias:
  its int8 graph is timed but is wrong (its max abs difference says by how much).

(MultiHeadAttention's packed-QKV layout is not implemented on CPU in onnxruntime 1.31.)
Each graph's embeddings are compared with the exported fp32 graph's on one padded
batch. int8 graphs are plain dynamic int8 (`export.quantize.quantize_int8`, per-channel),
the same for all three. The rewrite matches the exported graph's spelling exactly and
refuses anything else (it is a measurement, not an export path).

    .venv/bin/python benchmarks/export_memory.py --only 6x768 --output /tmp/em
    .venv/bin/python benchmarks/mpnet_attention.py --model /tmp/em/6x768 --output /tmp/ma

(`export_memory.py` writes the 6 x 768 MPNet-layout student of all-mpnet-base-v2, the
teacher's layers 1, 3, 5, 8, 10, 12, and its export; any MPNet export folder will do.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def _single(nodes: list[Any], op_type: str, what: str) -> Any:
    if len(nodes) != 1 or nodes[0].op_type != op_type:
        raise SystemExit(f"unexpected graph near {what}: {[n.op_type for n in nodes]}")
    return nodes[0]


def rewrite_attention(model: Any, fused: str) -> int:
    """Replace each Softmax-centred attention of `model` by `fused` ("mha" or "attention").

    Returns:
        The number of layers rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights = {init.name: init for init in graph.initializer}

    def made_by(name: str, op_type: str) -> Any:
        return _single([producer[name]] if name in producer else [], op_type, name)

    def projection(name: str, perm: list[int]) -> dict[str, Any]:
        """Transpose(perm) <- Reshape <- Add(bias) <- MatMul(x, W)."""
        transpose = made_by(name, "Transpose")
        if list(transpose.attribute[0].ints) != perm:
            raise SystemExit(f"{transpose.name}: perm {list(transpose.attribute[0].ints)}")
        reshape = made_by(transpose.input[0], "Reshape")
        add = made_by(reshape.input[0], "Add")
        bias = next(i for i in add.input if i in weights)
        matmul = made_by(next(i for i in add.input if i not in weights), "MatMul")
        kernel = next(i for i in matmul.input if i in weights)
        source = next(i for i in matmul.input if i not in weights)
        return {"core": [transpose, reshape], "add": add, "matmul": matmul, "x": source,
                "kernel": kernel, "bias": bias}

    removed, added = [], []
    for index, softmax in enumerate([n for n in graph.node if n.op_type == "Softmax"]):
        add = made_by(softmax.input[0], "Add")
        scaled = next(producer[i] for i in add.input
                      if i in producer and producer[i].op_type == "Div")
        attention_bias = next(i for i in add.input if i != scaled.output[0])
        scores = made_by(scaled.input[0], "MatMul")
        scale = 1.0 / float(numpy_helper.to_array(weights[scaled.input[1]]))
        q, k = projection(scores.input[0], [0, 2, 1, 3]), projection(scores.input[1],
                                                                      [0, 2, 3, 1])
        context = _single(consumers[softmax.output[0]], "MatMul", softmax.name)
        v = projection(context.input[1], [0, 2, 1, 3])
        back = _single(consumers[context.output[0]], "Transpose", context.name)
        merged = _single(consumers[back.output[0]], "Reshape", back.name)
        if not q["x"] == k["x"] == v["x"]:
            raise SystemExit(f"layer {index}: Q, K and V read different inputs")
        hidden = numpy_helper.to_array(weights[q["kernel"]]).shape[1]
        heads = hidden // round(1.0 / scale ** 2)
        removed += [add, scaled, scores, softmax, context, back, merged,
                    *q["core"], *k["core"], *v["core"]]
        if fused == "mha":
            added.append(helper.make_node(
                "MultiHeadAttention",
                [q["add"].output[0], k["add"].output[0], v["add"].output[0], "", "",
                 attention_bias], [merged.output[0]], name=f"MultiHeadAttention_{index}",
                domain="com.microsoft", num_heads=heads, scale=scale))
            continue
        removed += [p[part] for p in (q, k, v) for part in ("add", "matmul")]
        packed = np.concatenate([numpy_helper.to_array(weights[p["kernel"]])
                                 for p in (q, k, v)], axis=1)
        packed_bias = np.concatenate([numpy_helper.to_array(weights[p["bias"]])
                                      for p in (q, k, v)])
        graph.initializer.extend([numpy_helper.from_array(packed, f"attention_{index}_qkv"),
                                  numpy_helper.from_array(packed_bias,
                                                          f"attention_{index}_qkv_bias")])
        added.append(helper.make_node(
            "Attention", [q["x"], f"attention_{index}_qkv", f"attention_{index}_qkv_bias", "",
                          "", attention_bias], [merged.output[0]], name=f"Attention_{index}",
            domain="com.microsoft", num_heads=heads, scale=scale))
    gone = {id(node) for node in removed}
    pending = [node for node in graph.node if id(node) not in gone] + added
    ready = {value.name for value in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered = []
    while pending:  # topological order, the rewritten nodes where their inputs are ready
        left = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                left.append(node)
        if len(left) == len(pending):
            raise SystemExit(f"rewrite left dangling inputs at {[n.name for n in left][:3]}")
        pending = left
    del graph.node[:]
    graph.node.extend(ordered)
    return len(added)


def padded_feeds(vocab_size: int, seq_len: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    ids = rng.integers(1000, vocab_size, (2, seq_len)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, seq_len // 3:] = 0
    ids[1, seq_len // 3:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def time_graphs(paths: dict[str, str], feeds: dict[str, np.ndarray], threads: int,
                rounds: int, per_round: int) -> dict[str, float]:
    """p50 ms of each graph: the median over rounds of each round's median, interleaved."""
    from serving.bench import median_of_round_medians_ms, time_onnx_interleaved

    times = time_onnx_interleaved(paths, feeds, threads, rounds, per_round)
    return {name: median_of_round_medians_ms(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a `tf-minilm export` folder (MPNet)")
    parser.add_argument("--output", default="/tmp/mpnet-attention")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=10)
    args = parser.parse_args()
    import onnx

    from export.quantize import quantize_int8
    from serving.runtime import make_session, timing_feeds

    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.model, "export_report.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    if report["model_type"] != "mpnet":
        raise SystemExit(f"{args.model} is a {report['model_type']} export, not MPNet")
    source = os.path.join(args.model, "model.onnx")
    paths = {"unfused (as exported)": source}
    layers = {}
    for fused, name in (("mha", "MultiHeadAttention"), ("attention", "Attention")):
        model = onnx.load(source)
        layers[name] = rewrite_attention(model, fused)
        paths[name] = os.path.join(args.output, f"{fused}.onnx")
        onnx.save(model, paths[name])
    for name in list(paths):
        int8 = os.path.join(args.output, f"{name.split()[0].lower()}.int8.onnx")
        quantize_int8(paths[name], int8)
        paths[f"{name}, int8"] = int8
    check = padded_feeds(report["vocab_size"], args.seq_len)
    reference = make_session(source).run(["sentence_embedding"], check)[0]
    differences = {name: float(np.abs(make_session(path).run(["sentence_embedding"], check)[0]
                                      - reference).max()) for name, path in paths.items()}
    latency = time_graphs(paths, timing_feeds(report["vocab_size"], args.seq_len),
                          args.threads, args.rounds, args.per_round)
    rows = [{"graph": name, "layers_fused": layers.get(name.split(",")[0], 0),
             "p50_ms": round(latency[name], 3),
             "vs_unfused": round(latency[name.replace(name.split(",")[0],
                                                      "unfused (as exported)")]
                                 / latency[name], 3),
             "max_abs_vs_fp32_export": differences[name]} for name in paths]
    print(f"| graph | p50 ms, 1 x {args.seq_len}, {args.threads} threads | speed-up vs unfused "
          "(same precision) | max abs diff vs exported fp32 |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['graph']} | {row['p50_ms']:.2f} | {row['vs_unfused']:.3f}x "
              f"| {row['max_abs_vs_fp32_export']:.2e} |")
    with open(os.path.join(args.output, "mpnet_attention.json"), "w", encoding="utf-8") as out:
        json.dump({"model": args.model, "seq_len": args.seq_len, "threads": args.threads,
                   "rows": rows}, out, indent=2)


if __name__ == "__main__":
    main()
