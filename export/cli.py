"""`tf-minilm export`: a student to ONNX (fp32 + int8), fused for onnxruntime, checked.

Owns: the command's flags and its summary; the work is `export.pipeline`'s. Imports:
`export.convert`, `export.errors`, `export.pipeline` (inside `run`).

Imports nothing heavy at module level: TensorFlow, tf2onnx and onnxruntime are
imported inside `run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from tf_minilm.argtypes import finite_float

HELP = ("export a student (HF folder or .keras file) to ONNX fp32 + int8 with onnxruntime "
        "fusions, checked for parity against Keras and written atomically")

logger = logging.getLogger(__name__)


def default_output(student: str) -> str:
    """`<STUDENT>-onnx` beside the student (the `.keras` suffix dropped)."""
    base = os.path.normpath(student)
    if base.endswith(".keras"):
        base = base[: -len(".keras")]
    return base + "-onnx"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `export` flags to `parser`."""
    parser.add_argument("student", metavar="STUDENT",
                        help="HF checkpoint folder (config.json, model.safetensors, tokenizer) "
                             "or a .keras file holding an Encoder")
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
    parser.add_argument("--max-seq-len", type=int, default=128,
                        help="longest input in tokens, capped by the model's position table")
    parser.add_argument("--int8-min-cosine", type=finite_float, default=0.99,
                        help="least cosine between each int8 and Keras float32 sentence embedding "
                             "on the built-in validation sentences; below it the export fails")
    parser.add_argument("--tokenizer", default=None, metavar="DIR",
                        help="tokenizer folder (tokenizer.json or vocab.txt) for a .keras "
                             "STUDENT (default: the student/ folder beside it)%(default).0s")


def _print_summary(output: str, report: dict) -> None:
    parity = report["parity"]
    print(f"exported {report['source']} -> {output}")
    for name, size in report["files"]["model_bytes"].items():
        print(f"  {name}: {size / 1e6:.1f} MB")
    if report["fused_operators"] is not None:
        print(f"  fused operators: {report['fused_operators']}")
    fp32 = parity["fp32"]
    print(f"  fp32 parity: last_hidden_state max abs {fp32['max_abs_last_hidden_state']:.2e}, "
          f"sentence_embedding max abs {fp32['max_abs_sentence_embedding']:.2e} "
          f"(tolerance {fp32['tolerance']:g})")
    if "int8" in parity:
        int8 = parity["int8"]
        print(f"  int8 cosine to fp32: min {int8['min_cosine']:.4f}, mean {int8['mean_cosine']:.4f}"
              f" (threshold {int8['threshold']})")


def run(args: argparse.Namespace) -> int:
    """Runs the export; returns 0, 1 when a check or the export fails, 2 on a bad flag."""
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
    if args.max_seq_len < 2:
        print(f"error: --max-seq-len must be >= 2, got {args.max_seq_len}", file=sys.stderr)
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
