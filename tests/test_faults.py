"""Fault injection: corrupt checkpoints and weights, foreign folders, a full disk, SIGKILL.

Each fault must end with a clear error naming the file (or a recovery that says what it
did), and no data lost: the user's files stay, a good earlier state stays usable.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from _multiworker_worker import make_dataset, tiny_student, tiny_teacher

from tests.conftest import make_wordpiece_tokenizer
from tf_minilm.distill.options import TrainOptions
from tf_minilm.distill.state import CheckpointManager, TrainingCheckpointError
from tf_minilm.distill.trainer import run_distillation
from tf_minilm.fileio import OWNER_MARKER, NotOurFolderError, staged_folder
from tf_minilm.hf.checkpoints import load_hf_checkpoint, save_hf_checkpoint
from tf_minilm.hf.errors import CheckpointError
from tf_minilm.model.config import EncoderConfig
from tf_minilm.model.encoder import Encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build():
    teacher = tiny_teacher(0)
    return teacher, tiny_student(teacher, 1)


def options(**overrides) -> TrainOptions:
    values = {"steps": 30, "learning_rate": 3e-3, "checkpoint_every": 10, "log_every": 10,
              "relation_heads": 4, "loss": "minilmv2", "resume": True, "strategy": "default", "precision": "float32",
              "jit_compile": False}
    return TrainOptions(**{**values, **overrides})


def corrupt(path: str, how: str) -> None:
    data = open(path, "rb").read()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = b""
    elif how == "zeroed":  # header intact, bytes inside an array zeroed: the CRC fails
        middle = len(data) // 2
        data = data[:middle] + b"\0" * 256 + data[middle + 256:]
    with open(path, "wb") as handle:
        handle.write(data)


# ----------------------------------------------------------------- training checkpoints
@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "empty", "zeroed"])
def test_a_corrupt_latest_checkpoint_resumes_from_the_previous_one(tmp_path, caplog, how):
    # The uninterrupted run's weights are the reference; its last checkpoint is corrupted.
    straight = run_distillation(build, make_dataset, tmp_path / "b", options(), verbose=0)
    expected = [weight.numpy() for weight in straight.student.weights]
    latest = CheckpointManager(str(tmp_path / "b" / "checkpoints"), 3).latest()
    assert latest.endswith("ckpt-00000030.npz")
    corrupt(latest, how)
    starts = []

    def dataset_from(start):
        starts.append(start)
        return make_dataset(start)

    resumed = run_distillation(build, dataset_from, tmp_path / "b", options(), verbose=0)
    assert starts == [20] and resumed.step == 30
    assert "not a readable training checkpoint" in caplog.text and latest in caplog.text
    assert os.path.exists(latest + ".corrupt")  # kept aside, never deleted
    for a, b in zip(expected, resumed.student.weights, strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=0, atol=1e-6)


def test_no_readable_checkpoint_is_one_error_naming_the_folder(tmp_path):
    manager = CheckpointManager(str(tmp_path / "ck"), 3)
    os.makedirs(manager.directory)
    for step in (10, 20):
        with open(manager.path(step), "wb") as handle:
            handle.write(b"garbage")
    with pytest.raises(TrainingCheckpointError, match=r"no training checkpoint in .*ck reads"):
        manager.newest_readable()


def test_a_full_disk_while_checkpointing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    run_distillation(build, make_dataset, tmp_path / "run", options(steps=20), verbose=0)
    manager = CheckpointManager(str(tmp_path / "run" / "checkpoints"), 3)
    before = manager.checkpoints()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    teacher, student = build()
    with pytest.raises(OSError, match="No space left"):
        manager.save(30, student.weights, [], {"fingerprint": {}})
    assert manager.checkpoints() == before
    assert not [n for n in os.listdir(manager.directory) if ".partial" in n]
    manager.read(before[-1][1])  # still intact


# ----------------------------------------------------------------------------- weights
def tiny_checkpoint(folder) -> str:
    keras.utils.set_random_seed(0)
    tokenizer = make_wordpiece_tokenizer()
    encoder = Encoder(EncoderConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, max_position_embeddings=64))
    return save_hf_checkpoint(encoder, tokenizer, folder)


def poison_safetensors(folder: str) -> None:
    """Overwrite bytes inside the first tensor with NaNs, the header intact."""
    path = os.path.join(folder, "model.safetensors")
    data = bytearray(open(path, "rb").read())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header + 64: header + 64 + 64] = np.full(16, np.nan, np.float32).tobytes()
    open(path, "wb").write(bytes(data))


def test_corrupt_weights_are_refused_on_load_and_never_exported(tmp_path):
    from export import export_model
    from export.errors import ExportError

    folder = tiny_checkpoint(tmp_path / "student")
    poison_safetensors(folder)
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor '.*' holds 16 NaN"):
        load_hf_checkpoint(folder)
    with pytest.raises(ExportError, match="holds 16 NaN"):
        export_model(folder, tmp_path / "onnx")
    assert not os.path.exists(tmp_path / "onnx")


def test_distill_with_a_corrupt_teacher_fails_before_any_work(tmp_path, caplog):
    from tf_minilm.cli import main

    teacher = tiny_checkpoint(tmp_path / "teacher")
    poison_safetensors(teacher)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the model {i} reads a text" for i in range(100)))
    output = tmp_path / "run"
    code = main(["distill", "--teacher", str(teacher), "--corpus", str(corpus),
                 "--doc-separator", "line", "--student-layers", "1", "--max-seq-len", "16",
                 "--batch-size", "4", "--steps", "4", "--output", str(output)])
    assert code == 2 and "--teacher:" in caplog.text and "NaN" in caplog.text
    assert not (output / "config.json").exists() and not (output / "cache").exists()


# ------------------------------------------------------------------- foreign folders
def test_foreign_folders_are_never_replaced_or_written_into(tmp_path, caplog):
    from export import export_model
    from export.errors import ExportError
    from tf_minilm.cli import main

    student = tiny_checkpoint(tmp_path / "student")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "model.onnx").write_text("my own file, not an export")
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match=f"no {OWNER_MARKER}"):
        export_model(student, precious)
    with pytest.raises(CheckpointError, match="not written by tf-minilm"):
        save_hf_checkpoint(load_hf_checkpoint(student)[0], None, precious)
    with pytest.raises(NotOurFolderError):
        with staged_folder(precious):
            pass
    assert main(["distill", "--teacher", student, "--output", str(precious),
                 "--steps", "2"]) == 2
    assert "--output:" in caplog.text and "not written by tf-minilm" in caplog.text
    assert sorted(os.listdir(precious)) == ["model.onnx", "notes.txt"]
    assert (precious / "notes.txt").read_text() == "keep me"


def test_stale_staging_of_a_killed_write_is_cleaned_by_the_next(tmp_path):
    target = tmp_path / "out"
    stale = tmp_path / ".out.staging-killed"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"x")
    with staged_folder(target) as staging:
        open(os.path.join(staging, "done.txt"), "w").write("ok")
    assert not stale.exists() and (target / "done.txt").read_text() == "ok"
    assert json.loads((target / OWNER_MARKER).read_text())["written_by"] == "tf-minilm"


# ---------------------------------------------------------------------------- SIGKILL
@pytest.mark.slow
@pytest.mark.parametrize("delay", [2.0, 6.0])
def test_an_export_killed_at_any_point_leaves_the_old_export_or_none(tmp_path, delay):
    student = tiny_checkpoint(tmp_path / "student")
    output = tmp_path / "onnx"
    from tf_minilm.cli import main

    arguments = ["export", student, "--output", str(output), "--quantize", "none",
                 "--max-seq-len", "32"]
    # Only the killed export needs a process of its own; the others run here.
    assert main(arguments) == 0
    first = (output / "export_report.json").read_bytes()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    process = subprocess.Popen([sys.executable, "-m", "tf_minilm.cli", *arguments], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    # the folder is the old export or the new one, complete either way
    report = json.loads((output / "export_report.json").read_text())
    assert report and (output / "model.onnx").exists()
    assert main(arguments) == 0
    assert not [n for n in os.listdir(tmp_path) if "staging" in n or ".old-" in n]
    assert json.loads((output / "export_report.json").read_text()).keys() == \
        json.loads(first).keys()
