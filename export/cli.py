"""`tf-minilm export`: a student to ONNX (fp32 + int8), fused for onnxruntime, checked.

Owns: the command's flags and its summary; the work is `export.pipeline`'s. Imports: `tf_minilm.rules`,
`export.memory`, `export.convert`, `export.errors`, `export.pipeline` (inside `run`),
`tf_minilm.argtypes`.

Imports nothing heavy at module level: TensorFlow, tf2onnx and onnxruntime are
imported inside `run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from tf_minilm import rules
from tf_minilm.argtypes import finite_float

HELP = ("export a student (HF folder or .keras file) or a fine-tuned classifier (the .keras "
        "file `tf-minilm evaluate --save-model` writes) to ONNX fp32 + int8 with onnxruntime "
        "fusions, checked for parity against Keras and written atomically")

logger = logging.getLogger(__name__)

RETURNS_TENSORFLOW_MEMORY = True
"""Tells `tf_minilm.cli` not to turn TensorFlow's caching BFC allocator on: `run` has
TensorFlow use the system's malloc (`export.memory.free_tensorflow_memory_on_release`)."""


def default_output(student: str) -> str:
    """`<STUDENT>-onnx` beside the student (the `.keras` suffix dropped)."""
    base = os.path.normpath(student)
    if base.endswith(".keras"):
        base = base[: -len(".keras")]
    return base + "-onnx"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `export` flags to `parser`."""
    parser.add_argument("student", metavar="STUDENT",
                        help="HF checkpoint folder (config.json, model.safetensors, tokenizer), "
                             "a .keras file holding an Encoder, or a fine-tuned classifier's "
                             ".keras file (exported with a logits output and labels.json)")
    parser.add_argument("--output", "-o", default=None, metavar="DIR",
                        help="output folder, replaced only when every check passes "
                             "(default: STUDENT-onnx beside the student)%(default).0s")
    parser.add_argument("--opset", type=int, default=17,
                        help="ONNX opset, 13-18 (tf2onnx 1.17 cannot convert 19 or later)")
    parser.add_argument("--quantize", choices=("int8", "none"), default="int8",
                        help="also write model.int8.onnx (dynamic int8, per-channel weights)")
    parser.add_argument("--no-optimize", action="store_true",
                        help="skip onnxruntime's transformer fusions (Attention, "
                             "SkipLayerNormalization, BiasGelu, EmbedLayerNormalization), which "
                             "are otherwise required")
    parser.add_argument("--pooling", choices=("mean", "cls"), default=None,
                        help="pooling of the sentence_embedding output (L2-normalised); "
                             "default: what the model folder's sentence-transformers files "
                             "declare (modules.json, 1_Pooling/config.json), else mean; a "
                             "different value overrides them with a warning")
    parser.add_argument("--max-seq-len", type=int, default=None,
                        help="longest input in tokens, capped by the model's position table "
                             "(default: a classifier's fine-tuning length when recorded beside "
                             "it, else 128)%(default).0s")
    parser.add_argument("--int8-min-cosine", type=finite_float, default=0.99,
                        help="least cosine between each int8 and Keras float32 sentence embedding "
                             "on the built-in validation sentences; when plain dynamic int8 "
                             "misses it the export tries its remedies (smoothing, outlier "
                             "channels in fp32) and fails only if none holds")
    parser.add_argument("--int8-max-prob-diff", type=finite_float, default=0.05,
                        help="classifiers: largest change of any class probability between int8 "
                             "and Keras float32 on the validation sentences")
    parser.add_argument("--labels", default=None, metavar="NAME,NAME,...",
                        help="classifiers: label names in logit order (default: those "
                             "`tf-minilm evaluate` saved beside the .keras file, else "
                             "LABEL_0, LABEL_1, ...)%(default).0s")
    parser.add_argument("--tokenizer", default=None, metavar="DIR",
                        help="tokenizer folder (tokenizer.json or vocab.txt) for a .keras "
                             "STUDENT (default: the student/ folder beside it)%(default).0s")


def _print_summary(output: str, report: dict) -> None:
    parity = report["parity"]
    print(f"exported {report['source']} ({report['kind']}) -> {output}")
    if report["kind"] == "classifier":
        print(f"  labels: {', '.join(report['labels'])}")
    for name, size in report["files"]["model_bytes"].items():
        print(f"  {name}: {size / 1e6:.1f} MB")
    if report["fused_operators"] is not None:
        print(f"  fused operators: {report['fused_operators']}")
    fp32 = parity["fp32"]
    diffs = ", ".join(f"{key[len('max_abs_'):]} max abs {value:.2e}" for key, value in fp32.items()
                      if key.startswith("max_abs_"))
    print(f"  fp32 parity: {diffs} (tolerance {fp32['tolerance']:g})")
    if "int8" in parity:
        int8, choice = parity["int8"], report["int8"]
        if "min_cosine" in int8:
            held = f"cosine to fp32: min {int8['min_cosine']:.4f}, mean {int8['mean_cosine']:.4f}"
        else:
            held = (f"class probabilities within {int8['max_abs_probability']:.4f} of fp32, "
                    f"labels agree on {int8['label_agreement']:.0%}")
        speed = f", {choice['speedup']:.2f}x fp32 at batch 1" if "speedup" in choice else ""
        print(f"  int8 ({choice['variant']}): {held} (threshold {int8['threshold']}){speed}")
    if report.get("serve_default"):
        print(f"  `tf-minilm serve` serves {report['serve_default']} on CPUs of this kind "
              f"({(report.get('int8') or {}).get('cpu_int8_kind', 'no int8 graph')})")


def run(args: argparse.Namespace) -> int:
    """Runs the export; returns 0, 1 when a check or the export fails, 2 on a bad flag."""
    from export.memory import free_tensorflow_memory_on_release

    # Before anything imports TensorFlow: the Keras model's memory can then be returned
    # once the graph is converted (export.memory).
    free_tensorflow_memory_on_release()
    from export.convert import check_opset
    from export.errors import ExportError, FusionError, ParityError

    try:
        check_opset(args.opset)
    except ExportError as err:
        print(f"error: --opset: {err}", file=sys.stderr)
        return 2
    if not 0.0 <= args.int8_min_cosine <= 1.0:
        print(f"error: --int8-min-cosine must be in [0, 1], got {args.int8_min_cosine}",
              file=sys.stderr)
        return 2
    if not 0.0 <= args.int8_max_prob_diff <= 1.0:
        print(f"error: --int8-max-prob-diff must be in [0, 1], got {args.int8_max_prob_diff}",
              file=sys.stderr)
        return 2
    labels = None
    if args.labels is not None:
        labels = [name.strip() for name in args.labels.split(",")]
        if not all(labels):
            print(f"error: --labels: empty label name in {args.labels!r}", file=sys.stderr)
            return 2
    if args.max_seq_len is not None:
        try:
            rules.seq_len(args.max_seq_len, "--max-seq-len")
        except rules.RuleError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    from export.pipeline import export_model

    output = args.output or default_output(args.student)
    try:
        report = export_model(
            args.student,
            output,
            opset=args.opset,
            quantize=args.quantize,
            optimize=not args.no_optimize,
            pooling=args.pooling,
            max_seq_len=args.max_seq_len,
            tokenizer=args.tokenizer,
            int8_min_cosine=args.int8_min_cosine,
            labels=labels,
            int8_max_probability_diff=args.int8_max_prob_diff,
        )
    except ParityError as err:
        print(f"error: {err}", file=sys.stderr)
        print(json.dumps(err.figures, indent=2), file=sys.stderr)
        print(f"nothing was written to {output}", file=sys.stderr)
        return 1
    except FusionError as err:
        print(f"error: {err}", file=sys.stderr)
        print(f"nothing was written to {output}", file=sys.stderr)
        return 1
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    _print_summary(output, report)
    return 0
