"""Latency and throughput benchmark of exported ONNX models, with a Keras baseline.

Owns: what a benchmark row measures, the table and recording the rows in the measured
folders' model cards. Imports: `serving.runtime`, `tf_minilm.card`,
`tf_minilm.constants`, `tf_minilm.fileio`, `tf_minilm.versions`; `tf_minilm.hf` /
`tf_minilm.model` only for a Keras row.

For every model given:

- an exported ONNX folder gives an onnxruntime fp32 row set (`model.onnx`) and an
  int8 one (`model.int8.onnx`, when present); a `.onnx` file gives one set;
- a Keras student (a folder with `student.keras`, a `.keras` file, or a Hugging Face
  folder with `config.json` + `model.safetensors` and no `.onnx`) is run through
  TensorFlow as the baseline. TensorFlow and tf_minilm are imported inside
  `_keras_forward` only, so benchmarking ONNX models never loads TensorFlow.

Each set holds latency rows at batch 1 for several sequence lengths and one
throughput row (batch 32, sequence 128 by default). Inputs are fixed synthetic
batches (random token ids from a seeded generator, all-ones attention mask), the
same for every model; every row is warmed up, then timed for a number of repeats
or a time budget, whichever ends first. Both backends get the same thread count.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.runtime import EMBEDDING_OUTPUT, load_export_report, make_session
from tf_minilm.constants import INPUT_NAMES, ONNX_INT8_FILE, ONNX_MODEL_FILE
from tf_minilm.versions import environment

logger = logging.getLogger(__name__)

Forward = Callable[[np.ndarray, np.ndarray, np.ndarray], Any]


class BenchError(ValueError):
    """A model path the benchmark cannot use; the message names it."""


@dataclasses.dataclass
class BenchConfig:
    """What to measure and how.

    Args:
        seq_lens: sequence lengths of the latency rows.
        latency_batch: batch size of the latency rows.
        throughput_batch: batch size of the throughput row.
        throughput_seq: sequence length of the throughput row.
        warmup: untimed calls before each row.
        repeats: timed calls per row (at most).
        time_budget_s: stop timing a row after this many seconds (at least 3 calls).
        threads: intra-op threads for onnxruntime and TensorFlow.
        seed: seed of the synthetic token ids.

    Example:
    >>> config = BenchConfig(seq_lens=(16, 128), repeats=50, threads=2)
    """

    seq_lens: tuple[int, ...] = (16, 32, 128)
    latency_batch: int = 1
    throughput_batch: int = 32
    throughput_seq: int = 128
    warmup: int = 5
    repeats: int = 100
    time_budget_s: float = 10.0
    threads: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        self.seq_lens = tuple(int(s) for s in self.seq_lens)
        for name in ("latency_batch", "throughput_batch", "throughput_seq", "repeats", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"BenchConfig.{name} must be >= 1, got {getattr(self, name)}")
        if any(s < 2 for s in self.seq_lens):
            raise ValueError(f"BenchConfig.seq_lens must all be >= 2, got {self.seq_lens}")
        if self.warmup < 0 or self.time_budget_s <= 0:
            raise ValueError("BenchConfig.warmup must be >= 0 and time_budget_s > 0")


@dataclasses.dataclass
class Target:
    """One model file to benchmark.

    Args:
        name: model name (its folder's name).
        path: the file (.onnx / .keras) or, for an HF checkpoint, the folder.
        backend: "onnxruntime" or "tensorflow".
        precision: "fp32" or "int8".
    """

    name: str
    path: Path
    backend: str
    precision: str

    @property
    def file(self) -> str:
        """File name shown in the results."""
        return self.path.name if self.path.is_file() else "model.safetensors"


def _onnx_target(path: Path) -> Target:
    precision = "int8" if "int8" in path.name else "fp32"
    return Target(path.parent.resolve().name, path, "onnxruntime", precision)


def discover_targets(model_path: str | os.PathLike[str]) -> list[Target]:
    """Lists what to benchmark in `model_path`.

    Args:
        model_path: an exported ONNX folder, a `.onnx` file, a `.keras` file, a folder
            with `student.keras`, or a Hugging Face checkpoint folder.

    Returns:
        Targets in the order: Keras baseline (if any), ONNX fp32, ONNX int8.

    Raises:
        BenchError: nothing benchmarkable is there.
    """
    path = Path(model_path)
    if path.is_file():
        if path.suffix == ".onnx":
            return [_onnx_target(path)]
        if path.suffix == ".keras":
            return [Target(path.parent.resolve().name, path, "tensorflow", "fp32")]
        raise BenchError(f"{str(path)!r} is neither an .onnx nor a .keras file")
    if not path.is_dir():
        raise BenchError(f"model path {str(path)!r} does not exist")
    name = path.resolve().name
    targets = []
    if (path / "student.keras").is_file():
        targets.append(Target(name, path / "student.keras", "tensorflow", "fp32"))
    onnx_files = [path / f for f in (ONNX_MODEL_FILE, ONNX_INT8_FILE) if (path / f).is_file()]
    if not onnx_files:
        onnx_files = sorted(path.glob("*.onnx"))
    targets += [_onnx_target(f) for f in onnx_files]
    if not targets and (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        targets.append(Target(name, path, "tensorflow", "fp32"))
    if not targets:
        raise BenchError(
            f"{str(path)!r} holds nothing to benchmark: expected model.onnx / model.int8.onnx "
            "(exported folder), student.keras, or config.json + model.safetensors")
    return targets


def _vocab_size(folder: Path, default: int = 1000) -> int:
    tokenizer_file = folder / "tokenizer.json"
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(os.fspath(tokenizer_file)).get_vocab_size()
    for name in ("export_report.json", "config.json"):
        file = folder / name
        if file.is_file():
            value = json.loads(file.read_text(encoding="utf-8")).get("vocab_size")
            if isinstance(value, int) and value > 0:
                return value
    logger.warning("no tokenizer.json or vocab_size in %s; drawing token ids below %d",
                   folder, default)
    return default


def _onnx_forward(target: Target, threads: int) -> tuple[Forward, dict[str, int | None]]:
    """onnxruntime forward; limits from the folder's tokenizer and export report."""
    folder = target.path.parent
    report = load_export_report(folder)
    limits = {"vocab_size": _vocab_size(folder),
              "max_seq_len": report.max_seq_len if "max_seq_len" in report.raw else None}
    session = make_session(target.path, threads)
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    wanted = [EMBEDDING_OUTPUT] if EMBEDDING_OUTPUT in outputs else outputs
    missing = [name for name in inputs if name not in INPUT_NAMES]
    if missing:
        raise BenchError(f"{str(target.path)!r} has unexpected inputs {missing}")

    def forward(input_ids: np.ndarray, attention_mask: np.ndarray,
                token_type_ids: np.ndarray) -> Any:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids}
        return session.run(wanted, {name: feeds[name] for name in inputs})

    return forward, limits


def _keras_forward(target: Target, threads: int) -> tuple[Forward, dict[str, int | None]]:
    """TensorFlow baseline; the only place in serving/ that imports TensorFlow.

    Limits (vocabulary size, longest sequence) come from the encoder's config."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if tf.config.threading.get_intra_op_parallelism_threads() != threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            logger.warning("TensorFlow was initialised before the benchmark; its intra-op "
                           "thread count stays %d instead of %d",
                           tf.config.threading.get_intra_op_parallelism_threads(), threads)
    if target.path.is_file():
        import keras

        import tf_minilm.model.encoder  # noqa: F401  (registers the Encoder for deserialisation)

        encoder = keras.saving.load_model(target.path, compile=False)
    else:
        from tf_minilm.hf.checkpoints import load_hf_checkpoint

        encoder, _ = load_hf_checkpoint(target.path)
    config = getattr(encoder, "config", None)
    limits = {"vocab_size": getattr(config, "vocab_size", None),
              "max_seq_len": getattr(config, "max_sequence_length", None)}

    @tf.function(reduce_retracing=True)
    def embed(input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        out = encoder({"input_ids": input_ids, "attention_mask": attention_mask,
                       "token_type_ids": token_type_ids}, training=False)
        hidden = tf.cast(out["last_hidden_state"], tf.float32)
        mask = tf.cast(attention_mask, tf.float32)[:, :, None]
        pooled = tf.reduce_sum(hidden * mask, axis=1) / tf.maximum(
            tf.reduce_sum(mask, axis=1), 1e-9)
        return tf.math.l2_normalize(pooled, axis=1)

    def forward(input_ids: np.ndarray, attention_mask: np.ndarray,
                token_type_ids: np.ndarray) -> Any:
        return embed(tf.constant(input_ids, tf.int32), tf.constant(attention_mask, tf.int32),
                     tf.constant(token_type_ids, tf.int32)).numpy()

    return forward, limits


def synthetic_batch(vocab_size: int, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Fixed random token ids (avoiding the first ids, usually special tokens) and a full mask.

    Args:
        vocab_size: ids are drawn from `[min(1000, vocab_size // 2), vocab_size)`.
        batch: rows.
        seq: tokens per row.
        seed: generator seed; the same arguments always give the same batch.

    Returns:
        int64 `input_ids`, `attention_mask` (ones), `token_type_ids` (zeros), [batch, seq].
    """
    rng = np.random.default_rng([seed, batch, seq])
    low = min(1000, vocab_size // 2)
    return {"input_ids": rng.integers(low, vocab_size, (batch, seq), dtype=np.int64),
            "attention_mask": np.ones((batch, seq), np.int64),
            "token_type_ids": np.zeros((batch, seq), np.int64)}


def time_calls(call: Callable[[], Any], warmup: int, repeats: int,
               time_budget_s: float) -> np.ndarray:
    """Seconds taken by each timed call (after `warmup` untimed ones).

    Stops after `repeats` calls or once `time_budget_s` has passed (but never before
    min(3, repeats) calls).
    """
    for _ in range(warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > time_budget_s and len(times) >= min(3, repeats):
            break
    return np.array(times)


def time_interleaved(calls: dict[str, Callable[[], Any]], warmup: int, rounds: int,
                     per_round: int) -> dict[str, np.ndarray]:
    """Seconds of each call, timed in interleaved rounds so that they share the machine's state.

    Each round runs `per_round` timed calls of every entry in turn. On a shared machine a
    slow spell then falls on every entry alike, so ratios between entries hold even when
    absolute times drift, which timing one entry after another does not give.

    Args:
        calls: name -> a call to time.
        warmup: untimed calls of each entry before the first round.
        rounds: rounds over all entries.
        per_round: timed calls of each entry per round.

    Returns:
        name -> seconds, shaped [rounds, per_round].
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    times = {name: np.zeros((rounds, per_round)) for name in calls}
    for round_index in range(rounds):
        for name, call in calls.items():
            times[name][round_index] = time_calls(call, 0, per_round, math.inf)
    return times


def time_onnx_interleaved(paths: dict[str, str], feeds: dict[str, np.ndarray], threads: int,
                          rounds: int, per_round: int, warmup: int = 5) -> dict[str, np.ndarray]:
    """`time_interleaved` of onnxruntime sessions of `paths` computing the sentence
    embedding of `feeds` (every session alive: for graphs of one model, e.g. its fp32 and
    int8 forms or fused variants).

    Returns:
        name -> seconds, shaped [rounds, per_round].
    """
    sessions = {name: make_session(path, threads) for name, path in paths.items()}
    calls = {name: (lambda session=session: session.run([EMBEDDING_OUTPUT], feeds))
             for name, session in sessions.items()}
    return time_interleaved(calls, warmup=warmup, rounds=rounds, per_round=per_round)


def time_in_passes(openers: dict[str, Callable[[], Callable[[], Any]]], warmup: int,
                   passes: int, calls: int) -> dict[str, np.ndarray]:
    """Seconds of each entry's calls, one entry alive at a time, in alternating passes.

    Each pass opens every entry in turn (`openers[name]()` returns the call to time, e.g.
    a new onnxruntime session's run), warms it up, times `calls` calls and drops it
    before the next, as a serving process holds one model. For graphs of very different
    sizes this is the fair comparison: with all sessions alive and alternating every few
    calls (`time_interleaved`), 3 x 384 int8 graphs beside a 12 x 768 one ran 1.3-1.5x
    slower here (docs/base-size.md; likely the large graph's calls evicting the small
    one's weights from the caches). Repeating the passes still spreads a shared machine's
    slow spells over every entry.

    Args:
        openers: name -> a function that opens the entry and returns the call to time;
            the call (and what it holds) is dropped at the end of the entry's turn.
        warmup: untimed calls after each opening.
        passes: passes over all entries.
        calls: timed calls of each entry per pass.

    Returns:
        name -> seconds, shaped [passes, calls].
    """
    import gc

    times = {name: np.zeros((passes, calls)) for name in openers}
    for pass_index in range(passes):
        for name, opener in openers.items():
            call = opener()
            times[name][pass_index] = time_calls(call, warmup, calls, math.inf)
            del call
            gc.collect()
    return times


def median_of_round_medians_ms(times: np.ndarray) -> float:
    """The median over rounds of each round's median, in ms, of `time_interleaved` times
    (or over passes, of `time_in_passes` times).

    A round that fell in a slow spell moves this by one rank at most, where a mean of
    all calls would take in its whole slow tail.
    """
    return float(np.median(np.median(times, axis=1)) * 1000.0)


def summarize(times: np.ndarray, batch: int) -> dict[str, float]:
    """p50/p90/p99/mean latency in ms and sequences per second of timed calls."""
    ms = times * 1000.0
    return {
        "runs": int(len(times)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "throughput_seq_per_s": float(batch * len(times) / times.sum()),
    }


def benchmark_target(target: Target, config: BenchConfig) -> list[dict[str, Any]]:
    """Times one target on every configured shape.

    Args:
        target: what to run.
        config: shapes, repeats, threads.

    Returns:
        One row per shape: model, path, file, backend, precision, mode ("latency" or
        "throughput"), batch, seq, threads, runs, p50_ms, p90_ms, p99_ms, mean_ms,
        throughput_seq_per_s.
    """
    make = _onnx_forward if target.backend == "onnxruntime" else _keras_forward
    forward, limits = make(target, config.threads)
    vocab_size = limits["vocab_size"] or _vocab_size(
        target.path.parent if target.path.is_file() else target.path)
    max_seq_len = limits["max_seq_len"]
    shapes = [("latency", config.latency_batch, s) for s in config.seq_lens]
    shapes.append(("throughput", config.throughput_batch, config.throughput_seq))
    rows = []
    for mode, batch, seq in shapes:
        if max_seq_len is not None and seq > max_seq_len:
            logger.warning("skipping %s %s seq %d: longer than its max_seq_len %d",
                           target.name, target.file, seq, max_seq_len)
            continue
        inputs = synthetic_batch(vocab_size, batch, seq, config.seed)

        def call(inputs: dict[str, np.ndarray] = inputs) -> Any:
            return forward(inputs["input_ids"], inputs["attention_mask"],
                           inputs["token_type_ids"])

        logger.info("timing %s %s (%s) batch %d seq %d", target.name, target.file,
                    target.backend, batch, seq)
        times = time_calls(call, config.warmup, config.repeats, config.time_budget_s)
        rows.append({"model": target.name, "path": str(target.path), "file": target.file,
                     "backend": target.backend, "precision": target.precision, "mode": mode,
                     "batch": batch, "seq": seq, "threads": config.threads,
                     **summarize(times, batch)})
    return rows


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Adds `speedup` to each row: p50 of the first row with the same mode/batch/seq
    (the baseline, e.g. the Keras model when listed first) divided by this row's p50."""
    first: dict[tuple[str, int, int], float] = {}
    for row in rows:
        key = (row["mode"], row["batch"], row["seq"])
        first.setdefault(key, row["p50_ms"])
        row["speedup"] = first[key] / row["p50_ms"] if row["p50_ms"] > 0 else float("nan")


def versions() -> dict[str, Any]:
    """Versions of Python, the libraries used (TensorFlow only if already loaded) and the CPU."""
    packages = ["numpy", "onnxruntime", "tokenizers", "aiohttp"]
    if "tensorflow" in sys.modules:
        packages += ["tensorflow-cpu", "tensorflow", "keras"]
    return environment(packages)


def run_benchmarks(model_paths: Sequence[str | os.PathLike[str]],
                   config: BenchConfig | None = None) -> dict[str, Any]:
    """Benchmarks every target of every model path.

    Args:
        model_paths: folders or files (see `discover_targets`).
        config: what to measure.

    Returns:
        `{"config": ..., "rows": [...], "versions": ..., "created": ISO time}`.

    Raises:
        BenchError: a path holds nothing to benchmark (checked before timing anything).
    """
    config = config or BenchConfig()
    targets = [t for path in model_paths for t in discover_targets(path)]
    rows: list[dict[str, Any]] = []
    for target in targets:
        rows += benchmark_target(target, config)
    add_speedups(rows)
    return {"config": dataclasses.asdict(config), "rows": rows, "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain fixed-width table of benchmark rows."""
    header = ["model", "file", "backend", "prec", "mode", "batch", "seq", "runs", "p50 ms",
              "p90 ms", "p99 ms", "seq/s", "speedup"]
    lines = [[str(r["model"]), str(r["file"]), str(r["backend"]), str(r["precision"]),
              str(r["mode"]), str(r["batch"]), str(r["seq"]), str(r["runs"]),
              f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
              f"{r['throughput_seq_per_s']:.1f}", f"{r.get('speedup', float('nan')):.2f}x"]
             for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    text = [" ".join(h.ljust(w) if i < 5 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    text.append(" ".join("-" * w for w in widths))
    for line in lines:
        text.append(" ".join(c.ljust(w) if i < 5 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(line, widths, strict=True))))
    return "\n".join(text)


def card_folder(row: dict[str, Any]) -> Path:
    """The model folder a row measured: the ONNX file's or `.keras` file's folder, or the
    Hugging Face folder itself."""
    path = Path(row["path"])
    return path.parent if path.suffix in (".onnx", ".keras") else path


def record_in_cards(result: dict[str, Any]) -> list[str]:
    """Writes each benchmarked folder's rows into its model card (`README.md`), when
    tf-minilm wrote that card; returns the cards written.

    A `.keras` file's rows go to the `student/` folder beside it (whose card describes
    the same student).
    """
    from tf_minilm.card import latency_section, replace_section

    by_folder: dict[Path, list[dict[str, Any]]] = {}
    for row in result.get("rows", []):
        folder = card_folder(row)
        if Path(row["path"]).suffix == ".keras":
            folder = folder / "student"
        by_folder.setdefault(folder, []).append(row)
    written = []
    for folder, rows in by_folder.items():
        section = latency_section(rows, result.get("created"), result.get("versions"))
        if replace_section(os.fspath(folder), section):
            written.append(os.fspath(folder / "README.md"))
        else:
            logger.info("%s has no tf-minilm model card; latency not recorded there", folder)
    return written


def write_json(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Writes `payload` as JSON atomically (temporary file in the same folder, then rename)."""
    from tf_minilm.fileio import write_json_atomic  # no TensorFlow behind it

    write_json_atomic(path, payload, sort_keys=False)
