"""`tf-minilm distill` end to end on a tiny teacher: outputs, resume, and bad input."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.conftest import WORDS, make_wordpiece_tokenizer
from tf_minilm.cli import main
from tf_minilm.distill.config import DEFAULT_MAX_SEQ_LEN, DistillConfig
from tf_minilm.distill.job import resolve
from tf_minilm.hf.checkpoints import load_hf_checkpoint, save_hf_checkpoint
from tf_minilm.model.config import ConfigError, EncoderConfig
from tf_minilm.model.encoder import Encoder
from tf_minilm.model.pooling import PoolingSpec

TEACHER = EncoderConfig(vocab_size=200, hidden_size=32, num_hidden_layers=3,
                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    keras.utils.set_random_seed(0)
    teacher = Encoder(TEACHER)
    rng = np.random.default_rng(0)
    for weight in teacher.weights:  # a teacher with sharp, non-uniform attention
        if len(weight.shape) == 2:
            weight.assign(0.2 * rng.standard_normal(weight.shape).astype("float32"))
    return save_hf_checkpoint(teacher, make_wordpiece_tokenizer(),
                              tmp_path_factory.mktemp("teacher") / "teacher")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    with open(folder / "lines.txt", "w", encoding="utf-8") as handle:
        for _ in range(300):
            handle.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30))) + "\n")
    (folder / "bad.txt").write_bytes(b"good words here\n\xff\xfe broken bytes\nthe model\n")
    (folder / "image.txt").write_bytes(b"\x89PNG\x00\x00\x01binary")
    return folder


def tiny_args(teacher_dir, corpus_dir, output, *extra):
    return ["--log-level", "WARNING", "distill", "--teacher", str(teacher_dir), "--corpus",
            str(corpus_dir), "--doc-separator", "line", "--student-layers", "2",
            "--student-hidden", "16", "--student-heads", "4", "--relation-heads", "4",
            "--max-seq-len", "32", "--batch-size", "8", "--steps", "24", "--checkpoint-every", "8",
            "--log-every", "4", "--learning-rate", "1e-3", "--method", "minilmv2",
            "--output", str(output), *extra]


def aligned_args(teacher_dir, corpus_dir, output, *extra):
    """The default objective (output alignment) on the tiny teacher, widths differing."""
    args = tiny_args(teacher_dir, corpus_dir, output)
    index = args.index("--method")
    return args[:index] + args[index + 2:] + list(extra)


def student_inputs():
    ids = np.array([[2, 10, 11, 12, 13, 3, 0, 0], [2, 20, 21, 3, 0, 0, 0, 0]], dtype="int32")
    return {"input_ids": ids, "attention_mask": (ids > 0).astype("int32"),
            "token_type_ids": np.zeros_like(ids)}


@pytest.mark.slow
def test_end_to_end_outputs_and_resume(teacher_dir, corpus_dir, tmp_path, caplog):
    output = tmp_path / "run"
    assert main(tiny_args(teacher_dir, corpus_dir, output)) == 0

    for name in ("student", "student.keras", "checkpoints", "logs", "config.json",
                 "metrics.jsonl", "versions.json", "result.json"):
        assert (output / name).exists(), name
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
        assert (output / "student" / name).exists(), name
    config = json.loads((output / "config.json").read_text())
    assert config["teacher"] == str(teacher_dir) and config["student_intermediate"] == 64
    assert config["init"] == "random" and config["teacher_layer"] == 3
    # one fingerprint: config.json's is the checkpoints' (which add the trainer's own)
    from tf_minilm.distill.state import CheckpointManager

    _, header = CheckpointManager(str(output / "checkpoints"), 3).newest_readable()
    assert {key: header["fingerprint"][key] for key in config["fingerprint"]} == \
        config["fingerprint"]
    assert config["fingerprint"]["batch_size"] == 8
    assert "tensorflow-cpu" in json.loads((output / "versions.json").read_text())
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss_qq" in r]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 24
    assert any(name.startswith("events") for name in os.listdir(output / "logs"))
    result = json.loads((output / "result.json").read_text())
    assert result["step"] == 24
    assert result["corpus"]["skipped_undecodable"] == 1
    assert result["corpus"]["binary_files"] and "image.txt" in result["corpus"]["binary_files"][0]
    first_loss = next(r["loss"] for r in records if "loss_qq" in r)
    assert result["train"]["loss"] < first_loss

    # The HF folder and the .keras file hold the same student.
    hf_student, _ = load_hf_checkpoint(output / "student")
    keras_student = keras.saving.load_model(output / "student.keras")
    batch = student_inputs()
    np.testing.assert_array_equal(hf_student(batch)["last_hidden_state"].numpy(),
                                  keras_student(batch)["last_hidden_state"].numpy())
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    reference = transformers.AutoModel.from_pretrained(output / "student").eval()
    with torch.no_grad():
        theirs = reference(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
    real = batch["attention_mask"].astype(bool)
    assert np.abs(theirs.last_hidden_state.numpy()[real]
                  - keras_student(batch)["last_hidden_state"].numpy()[real]).max() < 1e-4

    # Simulate a run killed after its step-16 checkpoint: drop the later state, resume.
    interrupted = tmp_path / "interrupted"
    shutil.copytree(output, interrupted)
    for name in os.listdir(interrupted / "checkpoints"):
        if "00000024" in name:
            os.remove(interrupted / "checkpoints" / name)
    for name in ("student", "student.keras", "result.json"):
        path = interrupted / name
        shutil.rmtree(path) if path.is_dir() else os.remove(path)
    args = tiny_args(teacher_dir, corpus_dir, interrupted, "--resume")
    caplog.set_level(logging.INFO, logger="tf_minilm.distill.trainer")
    assert main(args) == 0
    assert re.search(r"resuming from .*ckpt-00000016.* at step 16", caplog.text), caplog.text
    resumed = keras.saving.load_model(interrupted / "student.keras")
    for a, b in zip(keras_student.weights, resumed.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    again = [json.loads(line) for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    resumed_steps = [r["step"] for r in again if "loss_qq" in r]
    assert resumed_steps == train_steps


def test_existing_run_is_never_overwritten(teacher_dir, corpus_dir, tmp_path, caplog):
    output = tmp_path / "run"
    output.mkdir()
    (output / "config.json").write_text("{}")
    assert main(tiny_args(teacher_dir, corpus_dir, output)) == 2
    assert "already holds a run" in caplog.text and "--resume" in caplog.text
    assert (output / "config.json").read_text() == "{}"


def test_resume_refuses_changed_settings(teacher_dir, corpus_dir, tmp_path, caplog):
    output = tmp_path / "run"
    output.mkdir()
    saved = resolve(DistillConfig(teacher=str(teacher_dir), corpus=[str(corpus_dir)],
                                  student_layers=2, student_hidden=16, student_heads=4,
                                  relation_heads=4, max_seq_len=32, output=str(output)))
    (output / "config.json").write_text(json.dumps(saved.to_dict()))
    assert main(tiny_args(teacher_dir, corpus_dir, output, "--resume")) == 2
    assert "settings differ" in caplog.text and "--batch-size (run: 32, now: 8)" in caplog.text
    assert main(tiny_args(teacher_dir, corpus_dir, tmp_path / "none", "--resume")) == 2
    assert "there is no run to resume" in caplog.text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--student-heads", "5"], r"--student-heads \(5\) does not divide --student-hidden \(16\)"),
        (["--relation-heads", "3"], r"--relation-heads=3 does not divide the teacher hidden size 32"),
        (["--teacher-layer", "4"], r"--teacher-layer 4 is out of range: the teacher has 3 layers"),
        (["--method", "minilm", "--student-heads", "2"], r"--method minilm with --student-heads 2: MiniLM v1 needs equal attention-head counts"),
        (["--init", "teacher-layers"], r"--init teacher-layers needs a student of the teacher.s layout and width"),
        (["--max-seq-len", "100"], r"--max-seq-len 100 exceeds the teacher's 64 positions"),
        (["--warmup-steps", "50"], r"--warmup-steps must be an integer in \[0, --steps=24\)"),
        (["--warmup-steps", "24"], r"--warmup-steps must be an integer in \[0, --steps=24\)"),
        (["--learning-rate", "nan"], r"--learning-rate must be > 0|--learning-rate must be a finite"),
        (["--learning-rate", "inf"], r"--learning-rate must be a finite number"),
        (["--loss", "embeding_mse"], r"--loss: unknown loss term 'embeding_mse'"),
        (["--loss=-1*hidden_mse"], r"--loss: weight of loss term 'hidden_mse' must be a finite"),
        (["--loss", "0*hidden_mse"], r"--loss: every weight"),
        (["--loss", "minilm", "--method", "minilmv2"], r"--method minilmv2 disagrees"),
        (["--loss", "hidden_mse"], r"--method minilmv2 disagrees with --loss \(its relation "
                                   r"term: none\)"),
        (["--stages", "minilmv2", "hidden_mse"], r"--stages: stage 1 \('minilmv2'\) needs its length"),
        (["--stages", "minilmv2:30", "hidden_mse"], r"--stages: stage 2 .* at or after the run's end"),
        (["--stages", "minilmv2:8", "hidden_mse", "--loss", "hidden_mse"], r"--loss or --stages, not both"),
        (["--stages", "minilmv2:12", "minilm"],
         r"--stages: the stages mix relation methods \(stage 1 minilmv2, stage 2 minilm\)"),
        (["--stages", "minilm:12", "hidden_mse + 0.1*minilmv2"],
         r"--stages: the stages mix relation methods \(stage 1 minilm, stage 2 minilmv2\)"),
        (["--init-layers", "1,2", "--init", "random"], r"--init-layers copies teacher layers"),
        (["--stages", "minilmv2:8", "hidden_mse", "--assistant-hidden", "16"],
         r"--stages cannot go with --assistant-hidden"),
        (["--init-layers", "1,2"], r"--init teacher-layers needs a student of the teacher.s layout and width"),
        (["--relations", "qx"], r"--relations: bad relation name 'qx'"),
        (["--assistant-hidden", "18"],
         r"--student-heads \(the assistant's too\) \(4\) does not divide --assistant-hidden \(18\)"),
        (["--batch-size", "4096"], r"--batch-size 4096 is larger than the \d+ training sequences"),
    ],
)
def test_invalid_combinations_name_the_flag(teacher_dir, corpus_dir, tmp_path, caplog, flags, message):
    output = tmp_path / "run"
    assert main(tiny_args(teacher_dir, corpus_dir, output, *flags)) == 2
    assert caplog.records and re.search(message, caplog.text), caplog.text
    assert not (output / "checkpoints").exists()
    assert not (output / "config.json").exists()  # refused before any work


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ("1,1", r"--init-layers: teacher layers \[1, 1\] must be strictly increasing"),
        ("3,1", r"must be strictly increasing"),
        ("1,4", r"--init-layers: teacher layer 4 is out of range: the teacher has 3 layers"),
        ("1", r"--init-layers: got 1 teacher layer\(s\) \[1\] for a student with 2 layers"),
        ("1,x", r"--init-layers: '1,x' is not a comma-separated list"),
    ],
)
def test_bad_init_layers_name_the_flag(teacher_dir, corpus_dir, tmp_path, caplog, layers,
                                       message):
    wide = ["--student-hidden", "32", "--student-intermediate", "128", "--init-layers", layers]
    assert main(tiny_args(teacher_dir, corpus_dir, tmp_path / "run", *wide)) == 2
    assert re.search(message, caplog.text), caplog.text
    assert not (tmp_path / "run").exists()


def test_bad_teacher_pooling_files_name_the_file(teacher_dir, corpus_dir, tmp_path, caplog):
    broken = tmp_path / "teacher"
    shutil.copytree(teacher_dir, broken)
    (broken / "modules.json").write_text(json.dumps(
        [{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (broken / "1_Pooling").mkdir(exist_ok=True)  # saved folders already have one
    (broken / "1_Pooling" / "config.json").write_text('{"pooling_mode_max_tokens": true}')
    assert main(tiny_args(broken, corpus_dir, tmp_path / "run")) == 2
    assert re.search(r"--teacher .*1_Pooling/config.json: field 'pooling_mode_max_tokens' selects "
                     "max pooling", caplog.text), caplog.text


@pytest.mark.slow
def test_a_pruned_start_is_the_teachers_strongest_slices_and_trains(teacher_dir, corpus_dir,
                                                                    tmp_path, caplog):
    """--init prune: a 16-wide student of the 32-wide teacher (head size 8, so 2 heads)
    starts from the teacher's strongest channels, heads and neurons of its spread layers."""
    output = tmp_path / "run"
    args = aligned_args(teacher_dir, corpus_dir, output, "--init", "prune", "--steps", "8",
                        "--student-heads", "2", "--student-intermediate", "64",
                        "--checkpoint-every", "4")
    assert main(args) == 0
    config = json.loads((output / "config.json").read_text())
    assert config["init"] == "prune" and config["init_layers"] == "1,3"
    plan = json.loads((output / "pruning.json").read_text())
    assert plan["teacher_layers"] == [1, 3] and plan["hidden"] == 16
    assert [len(heads) for heads in plan["heads"]] == [2, 2] and plan["intermediate"] == [64, 64]
    student = load_hf_checkpoint(output / "student")[0]
    assert (student.config.hidden_size, student.config.num_attention_heads) == (16, 2)
    # Refused before any work, naming the flags to change.
    for extra, message in (
            (["--student-heads", "4"], r"--init prune: width pruning keeps whole heads of 8 "
                                       r".* needs 2 heads, not 4"),
            (["--student-heads", "2", "--student-layers", "4"], r"--init prune needs a student "
                                                                r"with at most the teacher's 3"),
            (["--student-heads", "2", "--init-layers", "3,1"], r"--init-layers: .* strictly")):
        bad = tmp_path / "bad"
        caplog.clear()
        assert main(aligned_args(teacher_dir, corpus_dir, bad, "--init", "prune", *extra)) == 2
        assert re.search(message, caplog.text), caplog.text
        assert not (bad / "config.json").exists()
    # `--init auto` prunes a narrower student that whole teacher heads fit
    # (docs/base-size.md, "Pruned starts"), and starts one they do not fit at random
    auto = DistillConfig(teacher=str(teacher_dir), corpus=[str(corpus_dir)], student_layers=2,
                         student_hidden=16, student_heads=2, output=str(tmp_path / "auto"))
    assert resolve(auto).init == "prune"
    assert resolve(dataclasses.replace(auto, student_heads=4)).init == "random"
    assert resolve(dataclasses.replace(auto, student_hidden=32, student_heads=4,
                                       student_intermediate=128)).init == "teacher-layers"


def test_student_config_gives_sizes_and_names_the_fields_it_does_not_use(
        teacher_dir, corpus_dir, tmp_path, caplog):
    values = json.loads((Path(teacher_dir) / "config.json").read_text())
    sizes = tmp_path / "sizes.json"
    sizes.write_text(json.dumps(dict(values, num_hidden_layers=2, hidden_size=16,
                                     num_attention_heads=2, intermediate_size=48)))
    config = DistillConfig(teacher=str(teacher_dir), corpus=[str(corpus_dir)],
                           student_config=str(sizes), output=str(tmp_path / "run"))
    caplog.clear()
    student = resolve(config).student_config
    assert (student.num_hidden_layers, student.hidden_size, student.num_attention_heads,
            student.intermediate_size) == (2, 16, 2, 48)
    assert "not used" not in caplog.text  # the rest is the teacher's: nothing ignored
    sizes.write_text(json.dumps(dict(values, num_hidden_layers=2, hidden_dropout_prob=0.0)))
    student = resolve(config).student_config
    assert student.hidden_dropout_prob == values["hidden_dropout_prob"] == 0.1
    assert re.search(r"--student-config .*sizes.json: .* not used: hidden_dropout_prob: 0.0 "
                     r"\(student: 0.1\)", caplog.text), caplog.text


@pytest.mark.slow
def test_default_objective_trains_aligned_student_without_projection_and_extends(
        teacher_dir, corpus_dir, tmp_path, caplog):
    output = tmp_path / "run"
    assert main(aligned_args(teacher_dir, corpus_dir, output)) == 0
    config = json.loads((output / "config.json").read_text())
    assert config["loss"] == "10*embedding_mse + hidden_mse" and config["pooling"] == {
        "mode": "mean", "normalize": True}
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert any("loss_embedding_mse" in r and "loss_hidden_mse" in r for r in records)
    result = json.loads((output / "result.json").read_text())
    card = (output / "student" / "README.md").read_text()  # the model card, from the run
    assert card.startswith("---\nlibrary_name: sentence-transformers") and "distill" in card
    assert f"{result['fidelity']['mr']['spearman']:.4f}" in card
    mr = result["fidelity"]["mr"]
    assert mr["texts"].startswith("MR test split") and -1 <= mr["spearman"] <= 1
    assert set(mr) >= {"spearman", "cka", "knn@10", "num_texts"}
    # the projection (16 -> 32) is training-only: no saved artefact holds it
    from safetensors.numpy import load_file

    names = load_file(str(output / "student" / "model.safetensors"))
    assert not [name for name in names if "projection" in name]
    student = keras.saving.load_model(output / "student.keras")
    assert not [w.path for w in student.weights if "projection" in w.path]
    assert len(student.weights) == len(load_hf_checkpoint(output / "student")[0].weights)
    import onnx

    from export import export_model

    export_model(str(output / "student"), tmp_path / "onnx", quantize="none", max_seq_len=32)
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph
    shapes = {tuple(init.dims) for init in graph.initializer}
    assert (16, 32) not in shapes and (32, 16) not in shapes  # a 16 -> 32 projection's kernel

    # --resume --steps N extends the run: recorded, warm-up kept, the decay re-planned
    caplog.set_level(logging.INFO)
    assert main(aligned_args(teacher_dir, corpus_dir, output, "--resume", "--steps", "32")) == 0
    config = json.loads((output / "config.json").read_text())
    assert config["steps"] == 32 and config["warmup_steps"] == 2
    assert config["extensions"] == [{"from_steps": 24, "to_steps": 32}]
    assert json.loads((output / "result.json").read_text())["step"] == 32
    assert "extending the run" in caplog.text
    # any other change is still refused
    assert main(aligned_args(teacher_dir, corpus_dir, output, "--resume", "--steps", "40",
                             "--learning-rate", "1e-4")) == 2
    assert "--learning-rate (run: 0.001, now: 0.0001)" in caplog.text


def test_bad_corpus_and_teacher_paths(teacher_dir, corpus_dir, tmp_path, caplog):
    assert main(tiny_args(teacher_dir, tmp_path / "missing", tmp_path / "a")) == 2
    assert "missing" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("\n\n   \n")
    assert main(tiny_args(teacher_dir, empty, tmp_path / "b")) == 2
    assert "empty" in caplog.text.lower() or "no document" in caplog.text.lower()
    assert main(tiny_args(tmp_path / "no_teacher", corpus_dir, tmp_path / "c")) == 2
    assert "--teacher" in caplog.text and "not a folder" in caplog.text


def test_config_file_keys_and_flag_precedence(teacher_dir, corpus_dir, tmp_path, caplog):
    config_file = tmp_path / "distill.yaml"
    config_file.write_text(f"teacher: {teacher_dir}\ncorpus: [{corpus_dir}]\nstudent-layers: 2\n"
                           "student_hidden: 16\nrelation_heads: 4\nmax_seq_len: 32\n"
                           "student_heads: 3\n")
    # The file's student_heads (3) is invalid; the flag (4) wins and fixes it.
    args = ["distill", "--config", str(config_file), "--student-heads", "4", "--steps", "2",
            "--batch-size", "8", "--doc-separator", "line", "--output", str(tmp_path / "run")]
    assert main(args) == 0
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert resolved["student_heads"] == 4 and resolved["student_layers"] == 2
    config_file.write_text("teacher: x\nstudent_layerz: 2\n")
    assert main(["distill", "--config", str(config_file)]) == 2
    assert "unknown key 'student_layerz'" in caplog.text
    config_file.write_text("student_layers: [2\n")
    assert main(["distill", "--config", str(config_file)]) == 2
    assert "not valid YAML" in caplog.text
    config_file.write_text("steps: many\n")
    assert main(["distill", "--config", str(config_file)]) == 2
    assert "--steps has value 'many' of the wrong type" in caplog.text


def test_embedded_default_resolves_to_packaged_teacher_and_corpus(real_teacher_dir):
    job = resolve(DistillConfig())
    assert job.teacher_dir == real_teacher_dir
    assert job.corpus[0].endswith(os.path.join("bbcnews", "data"))
    assert [os.path.basename(path) for path in job.corpus[1:]] == [
        "guardian_headlines.csv.bz2", "political_data.csv", "presidential_debates_2016.csv.gz",
        "republican_convention_2016.csv", "hamlet.txt"]
    student = job.student_config
    assert (student.num_hidden_layers, student.hidden_size, student.num_attention_heads,
            student.intermediate_size) == (3, 384, 12, 1536)
    assert job.init == "teacher-layers" and job.teacher_layer == 6
    assert job.init_layers == (1, 3, 6)  # spread, the teacher's last layer kept
    assert job.train.objective.loss == "10*embedding_mse + hidden_mse"
    assert job.train.objective.method == "minilmv2" and 384 % job.config.relation_heads == 0
    assert job.pooling == PoolingSpec("mean", normalize=True)


def test_help_lists_units_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    text = capsys.readouterr().out
    for flag in ("--teacher", "--student-layers", "--relation-heads", "--precision", "--resume",
                 "--config", "1-based"):
        assert flag in text
    assert "(default: 64; with --data, the length its rows were prepared at)" in " ".join(
        text.split())  # --max-seq-len


def test_unknown_config_error_type_is_config_error():
    with pytest.raises(ConfigError, match="--init is 'x'"):
        DistillConfig(init="x").validate()


def test_cli_selects_the_bfc_allocator_unless_the_environment_says_otherwise(monkeypatch, caplog):
    monkeypatch.setenv("TF_CPU_ALLOCATOR_USE_BFC", "x")  # recorded, so undone after the test
    monkeypatch.delenv("TF_CPU_ALLOCATOR_USE_BFC")
    assert main(["distill", "--steps", "0"]) == 2  # rejected before any work
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
    monkeypatch.setenv("TF_CPU_ALLOCATOR_USE_BFC", "false")
    assert main(["distill", "--steps", "0"]) == 2
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "false"


def test_embedded_default_is_the_measured_row_of_the_paper_table():
    """`./dev distill` runs exactly the paper-table row the README names as the default."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks",
                        "paper_table.py")
    spec = importlib.util.spec_from_file_location("paper_table", path)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    row = table.DISTILLED[table.DEFAULT_ROW]
    assert row == {"corpus": "default"}  # no flags at all, on the default corpus
    best = table.DISTILLED["emb10-hidden-136-lr6e-4"]  # the first table's best row
    defaults = DistillConfig()
    assert defaults.corpus == [] and best["corpus"] == "bbc"
    spec = defaults.validate()
    assert spec.objective.loss == best["loss"]
    assert spec.optimizer.learning_rate == best["learning_rate"]
    from tf_minilm.model.student import spread_layers

    assert ",".join(map(str, spread_layers(6, defaults.student_layers))) == best["init_layers"]
    # every first-table row is pinned to the budget it was measured at
    assert all(table.DISTILLED[name]["steps"] == 400 for name in table.BBC_ROWS)
    assert table.budget(table.parse_args([])) == {
        "steps": defaults.steps, "batch_size": defaults.batch_size,
        "max_seq_len": DEFAULT_MAX_SEQ_LEN, "packing": defaults.packing}
