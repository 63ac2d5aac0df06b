"""Dynamic int8 quantization of an exported (fused or plain) ONNX graph, and the choice of
the int8 variant that holds.

Owns: the int8 quantization settings, the ladder of int8 variants (`VARIANTS`) and the
rule that picks one. Imports: `export.errors`, `export.logs`, `export.memory`,
`export.smoothing`, `export.outliers`, `serving.runtime` (its onnxruntime session, for
the speed ratio).

Weights are stored as signed int8 per output channel (per-tensor scales cost about four
points of cosine on real MiniLM weights, 7-bit `reduce_range` far more); activations
are quantized on the fly. `DefaultTensorType` tells the quantizer the element type of
tensors its shape inference cannot type, which happens behind the fused com.microsoft
operators.

Dynamic int8 gives each activation tensor one scale, so a model whose hidden states
have outlier channels (all-MiniLM-L6-v2: min cosine 0.962 to fp32 on the validation
sentences) loses most on short inputs. `choose_int8` tries, in order, variants that
each add float32 work to the one before: plain; the embedding lookup kept in float32
(free: a gather); the LayerNorm-fed products smoothed (exact, `export.smoothing`,
strength 0.5 then 0.7); the 16 largest-range input channels of the FFN output
projections computed in float32 (exact split, `export.outliers`); the same for the
attention output projections. The first variant that meets the floor is therefore the
fastest that does; its speed against the float32 graph is measured (batch 1) and
reported.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from export.errors import ExportError, ParityError
from export.logs import quiet
from export.memory import LARGE_INITIALIZER_BYTES, WEIGHTS_FILE, release_freed_heap
from export.outliers import DEFAULT_CHANNELS
from serving.runtime import speed_ratio

logger = logging.getLogger(__name__)

DEFAULT_OP_TYPES: tuple[str, ...] | None = None
"""None quantizes every operator type onnxruntime's dynamic quantizer supports."""


VARIANT_FILE = "variant.onnx"
"""The float32 variant handed to the quantizer, in a temporary folder beside the output."""
SEPARATE_PROCESS_BYTES = 256 * 2**20
"""float32 graphs at least this large are quantized in a child process (`quantize_int8`)."""


def quantize_int8(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    per_channel: bool = True,
    op_types: Sequence[str] | None = DEFAULT_OP_TYPES,
    nodes_to_exclude: Sequence[str] = (),
    separate_process: bool | None = None,
) -> None:
    """Write `destination`, the dynamic-int8 version of the ONNX model at `source`.

    onnxruntime's quantizer leaves heap behind in the process that ran it (with no
    Python object holding it, more after each call; docs/benchmarks.md#export-memory),
    which would stay for the rest of an export and add up over the ladder's variants. A
    large graph is therefore quantized in a fresh process (it imports neither TensorFlow
    nor the model), whose memory goes back to the system when it exits; a small one in
    this process, where the ~1.5 s of starting Python and onnxruntime there would cost
    more than the memory it saves.

    Args:
        source: float32 ONNX model file.
        destination: output file.
        per_channel: one weight scale per output channel (recommended).
        op_types: operator types to quantize (e.g. `("MatMul", "Attention")`), or None
            for all supported ones.
        nodes_to_exclude: node names kept in float32.
        separate_process: quantize in a child process; None decides by the size of
            the file `source` (`SEPARATE_PROCESS_BYTES`; a file whose weights are
            external data is small, so its caller decides).

    Raises:
        ExportError: onnxruntime's quantizer failed, or its process died.

    Example:
    >>> quantize_int8("out/model.onnx", "out/model.int8.onnx")
    """
    arguments = (os.fspath(source), os.fspath(destination), per_channel,
                 list(op_types) if op_types else None, list(nodes_to_exclude))
    if separate_process is None:
        separate_process = os.path.getsize(source) >= SEPARATE_PROCESS_BYTES
    if not separate_process:
        _quantize(*arguments)
    else:
        import json
        import subprocess
        import sys

        # A fresh interpreter (`-c`), not multiprocessing: spawning would re-import the
        # caller's main script, which need not guard its work with __main__. The memory
        # this process freed goes back first: both processes are resident meanwhile.
        release_freed_heap()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from export.quantize import _quantize_main; "
             "sys.exit(_quantize_main(sys.argv[1]))", json.dumps(arguments)],
            capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": path})
        if result.returncode == 2:  # `_quantize_main`'s ExportError, its last line
            raise ExportError(result.stderr.strip().splitlines()[-1])
        if result.returncode != 0:
            tail = " ".join(result.stderr.strip().splitlines()[-3:])
            raise ExportError(
                f"int8 quantization of {os.fspath(source)} failed: its process ended with "
                f"status {result.returncode} (a negative status is the signal that ended it, "
                f"-9 when the system ran out of memory): {tail}")
    logger.info("wrote %s (%.1f MB)", destination, os.path.getsize(destination) / 1e6)


def _quantize_main(arguments: str) -> int:
    """The child process of `quantize_int8`: `_quantize` on JSON arguments; exit status
    2 with the error as the last line of stderr when it fails."""
    import json
    import sys

    try:
        _quantize(*json.loads(arguments))
    except ExportError as err:
        print(str(err).replace("\n", " "), file=sys.stderr)
        return 2
    return 0


def _quantize(source: str, destination: str, per_channel: bool, op_types: list[str] | None,
              nodes_to_exclude: list[str]) -> None:
    """`quantize_int8`'s work, in whichever process runs it."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with quiet():
            quantize_dynamic(
                source,
                destination,
                op_types_to_quantize=op_types,
                per_channel=per_channel,
                reduce_range=False,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=nodes_to_exclude or None,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    except Exception as err:  # the quantizer raises assorted exception types
        raise ExportError(f"int8 quantization of {source} failed: {err}") from err


@dataclasses.dataclass(frozen=True)
class Int8Variant:
    """One rung of the int8 ladder.

    Args:
        name: what the report calls it.
        keep_embeddings: keep the embedding lookup (`EmbedLayerNormalization`, `Gather`)
            in float32.
        smooth_alpha: smooth the LayerNorm-fed products with this strength, or None.
        outlier_kinds: producers whose products get their outlier channels split off
            (keys of `export.outliers.PRODUCER_KINDS`).
        outlier_channels: channels split off per product.
    """

    name: str
    keep_embeddings: bool = False
    smooth_alpha: float | None = None
    outlier_kinds: tuple[str, ...] = ()
    outlier_channels: int = DEFAULT_CHANNELS


SMOOTHING_ALPHAS = (0.5, 0.7)
"""Smoothing strengths tried at each rung (0.7 held on all-MiniLM-L6-v2 where 0.5 did not)."""
VARIANTS = (
    Int8Variant("dynamic"),
    Int8Variant("dynamic, fp32 embeddings", keep_embeddings=True),
    *(Int8Variant(f"smoothed {alpha}", keep_embeddings=True, smooth_alpha=alpha)
      for alpha in SMOOTHING_ALPHAS),
    *(Int8Variant(f"smoothed {alpha}, fp32 FFN outliers", keep_embeddings=True,
                  smooth_alpha=alpha, outlier_kinds=("gelu",)) for alpha in SMOOTHING_ALPHAS),
    *(Int8Variant(f"smoothed {alpha}, fp32 FFN and attention outliers", keep_embeddings=True,
                  smooth_alpha=alpha, outlier_kinds=("gelu", "attention"))
      for alpha in SMOOTHING_ALPHAS),
)
"""The ladder, each rung adding float32 work to the rungs before it (the two alphas of
a rung cost the same)."""
EMBEDDING_OPS = ("EmbedLayerNormalization", "Gather")
SMOOTHED_SITES = ("ln_attention", "ln_matmul")
FIGURE_KEYS = ("min_cosine", "mean_cosine", "max_abs_probability", "label_agreement")


def write_variant(fp32_path: str | os.PathLike, destination: str | os.PathLike,
                  variant: Int8Variant, calibration: Sequence[dict[str, Any]]) -> list[str]:
    """Write `variant`'s int8 model of the float32 graph at `fp32_path` to `destination`.

    Args:
        fp32_path: the fused float32 ONNX file (left unchanged).
        destination: the int8 file.
        variant: which rung.
        calibration: feed dicts for activation ranges (smoothing, outlier channels).

    Returns:
        The names of the nodes kept in float32.
    """
    import onnx

    from export.outliers import split_outlier_channels
    from export.smoothing import activation_channel_max, find_sites, smooth_model

    model = onnx.load(os.fspath(fp32_path))
    workdir = os.path.dirname(os.path.abspath(os.fspath(destination)))
    if variant.smooth_alpha is not None:
        tensors = sorted({site["input"] for site in find_sites(model, SMOOTHED_SITES)})
        smooth_model(model, activation_channel_max(model, calibration, tensors),
                     variant.smooth_alpha, SMOOTHED_SITES)
    kept: list[str] = []
    if variant.outlier_kinds:
        kept += split_outlier_channels(model, calibration, variant.outlier_kinds,
                                       variant.outlier_channels)
    if variant.keep_embeddings:
        kept += [node.name for node in model.graph.node if node.op_type in EMBEDDING_OPS]
    if variant.smooth_alpha is None and not variant.outlier_kinds:
        source = os.fspath(fp32_path)
        quantize_int8(source, destination, nodes_to_exclude=kept)
        return kept
    # The variant goes to the quantizer as a file whose large weights are external data:
    # written tensor by tensor, not serialised whole beside the model (for a base-size
    # graph, 440 MB more at the ladder's peak). Its size is the float32 graph's.
    # Nothing may hold the model while the quantizer runs (a context manager's frame
    # would), so its temporary folder is a plain one.
    separate = os.path.getsize(fp32_path) >= SEPARATE_PROCESS_BYTES
    with tempfile.TemporaryDirectory(prefix=".variant-", dir=workdir) as folder:
        source = os.path.join(folder, VARIANT_FILE)
        onnx.save(model, source, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=WEIGHTS_FILE, size_threshold=LARGE_INITIALIZER_BYTES)
        del model  # the quantizer loads its own copy from `source`
        quantize_int8(source, destination, nodes_to_exclude=kept, separate_process=separate)
    return kept


def choose_int8(
    fp32_path: str | os.PathLike,
    destination: str | os.PathLike,
    check: Callable[[str], dict[str, Any]],
    calibration: Sequence[dict[str, Any]],
    failure: Callable[[dict[str, Any]], str],
    timing: dict[str, Any] | None = None,
    variants: Sequence[Int8Variant] = VARIANTS,
) -> dict[str, Any]:
    """Write the first (fastest) int8 variant that passes `check` to `destination`.

    Args:
        fp32_path: the fused float32 ONNX file.
        destination: where the chosen int8 model goes.
        check: int8 file -> figures with `passed` (`export.validate.check_int8`).
        calibration: feed dicts for activation ranges.
        failure: figures -> the sentence saying why they fail (`int8_failure`).
        timing: feeds of the speed ratio (`timing_feeds`); None skips timing.
        variants: the ladder, cheapest first.

    Returns:
        `{"variant", "kept_fp32_nodes", "smooth_alpha", "outlier_channels", "figures",
        "tried"}` and, when timed, `"timing_shape", "fp32_ms", "int8_ms", "speedup"`.

    Raises:
        ParityError: no variant passes; `figures["int8_tried"]` lists each one's figures.
            `destination` is removed.
    """
    tried: list[dict[str, Any]] = []
    first_figures = None
    for variant in variants:
        kept = write_variant(fp32_path, destination, variant, calibration)
        figures = check(os.fspath(destination))
        release_freed_heap()  # the variant's and its check's buffers, before the next
        first_figures = first_figures or figures
        tried.append({"variant": variant.name, **{k: figures[k] for k in FIGURE_KEYS
                                                  if k in figures},
                      "passed": figures["passed"]})
        logger.info("int8 variant %r: %s", variant.name, tried[-1])
        if figures["passed"]:
            choice: dict[str, Any] = {
                "variant": variant.name, "kept_fp32_nodes": len(kept),
                "smooth_alpha": variant.smooth_alpha,
                "outlier_channels": variant.outlier_channels if variant.outlier_kinds else 0,
                "figures": figures, "tried": tried}
            if timing is not None:
                choice.update(speed_ratio(fp32_path, destination, timing))
            return choice
    if os.path.exists(destination):
        os.remove(destination)
    best = max(tried, key=lambda row: row.get("min_cosine", -row.get("max_abs_probability", 1)))
    raise ParityError(
        failure(first_figures) + f". Remedies tried ({', '.join(r['variant'] for r in tried)}) "
        f"did not hold either; the closest was {best}", {"int8_tried": tried})
