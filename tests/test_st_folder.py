"""Student folders are sentence-transformers folders: files, pooling, and the same embeddings.

`SentenceTransformer(folder)` (PyTorch) must give what the Keras student and the ONNX
export give, for a mean-pooled normalised teacher and a CLS-pooled one.
"""

from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest
from conftest import make_wordpiece_tokenizer

from tf_minilm.hf.checkpoints import load_hf_checkpoint, save_hf_checkpoint
from tf_minilm.hf.errors import CheckpointError
from tf_minilm.model.config import EncoderConfig
from tf_minilm.model.encoder import Encoder
from tf_minilm.model.pooling import PoolingSpec, read_pooling, sentence_embedding
from tf_minilm.model.student import build_student
from tf_minilm.tokens import pad_encodings

TEXTS = ["the model is small and fast", "a good film", "news of the market and the bank",
         "the teacher and the student play a game this year", "bad"]
TEACHER = EncoderConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)


def _teacher_folder(tmp_path, spec: PoolingSpec) -> str:
    keras.utils.set_random_seed(0)
    folder = save_hf_checkpoint(Encoder(TEACHER), make_wordpiece_tokenizer(),
                                tmp_path / f"teacher-{spec.mode}", pooling=spec)
    with open(f"{folder}/sentence_bert_config.json", "w", encoding="utf-8") as handle:
        json.dump({"max_seq_length": 48, "do_lower_case": False}, handle)
    with open(f"{folder}/config_sentence_transformers.json", "w", encoding="utf-8") as handle:
        json.dump({"prompts": {"query": "query: "}, "similarity_fn_name": "cosine"}, handle)
    return folder


def _student_folder(tmp_path, teacher_folder: str) -> tuple[str, Encoder]:
    teacher, tokenizer = load_hf_checkpoint(teacher_folder)
    student = build_student(teacher, 1, 16, 2, 32, init="random", seed=3)
    folder = save_hf_checkpoint(student, tokenizer, tmp_path / "student",
                                pooling=read_pooling(teacher_folder),
                                teacher_folder=teacher_folder)
    return folder, student


def _keras_embeddings(student: Encoder, folder: str, spec: PoolingSpec) -> np.ndarray:
    _, tokenizer = load_hf_checkpoint(folder)
    batch = pad_encodings(tokenizer.encode_batch(TEXTS), pad_id=0)
    hidden = student(batch, training=False)["last_hidden_state"]
    return np.asarray(sentence_embedding(hidden, batch["attention_mask"], spec))


@pytest.mark.parametrize("spec", [PoolingSpec("mean", True), PoolingSpec("cls", False)])
def test_student_folder_holds_the_teachers_sentence_transformers_description(tmp_path, spec):
    teacher_folder = _teacher_folder(tmp_path, spec)
    folder, _ = _student_folder(tmp_path, teacher_folder)
    assert read_pooling(folder) == spec
    modules = json.loads(open(f"{folder}/modules.json", encoding="utf-8").read())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == \
        ["Transformer", "Pooling"] + (["Normalize"] if spec.normalize else [])
    pooling = json.loads(open(f"{folder}/1_Pooling/config.json", encoding="utf-8").read())
    assert pooling["word_embedding_dimension"] == 16  # the student's width, not the teacher's
    st_config = json.loads(open(f"{folder}/sentence_bert_config.json", encoding="utf-8").read())
    assert st_config["max_seq_length"] == 48  # carried over from the teacher
    model_config = json.loads(
        open(f"{folder}/config_sentence_transformers.json", encoding="utf-8").read())
    assert model_config["prompts"] == {"query": "query: "}


def test_folder_without_teacher_files_gets_the_models_own_length(tmp_path):
    keras.utils.set_random_seed(0)
    folder = save_hf_checkpoint(Encoder(TEACHER), make_wordpiece_tokenizer(), tmp_path / "m")
    assert read_pooling(folder) == PoolingSpec("mean", True)
    st_config = json.loads(open(f"{folder}/sentence_bert_config.json", encoding="utf-8").read())
    assert st_config["max_seq_length"] == 64


def test_a_teacher_st_file_that_is_not_an_object_is_named(tmp_path):
    teacher_folder = _teacher_folder(tmp_path, PoolingSpec())
    with open(f"{teacher_folder}/sentence_bert_config.json", "w", encoding="utf-8") as handle:
        handle.write("[1, 2]")
    with pytest.raises(CheckpointError, match="sentence_bert_config.json: expected a JSON object"):
        _student_folder(tmp_path, teacher_folder)


@pytest.mark.parametrize("spec", [PoolingSpec("mean", True), PoolingSpec("cls", False),
                                  PoolingSpec("cls", True)])
def test_sentence_transformers_encodes_as_keras_and_the_onnx_export(tmp_path, spec):
    st = pytest.importorskip("sentence_transformers")
    teacher_folder = _teacher_folder(tmp_path, spec)
    folder, student = _student_folder(tmp_path, teacher_folder)
    expected = _keras_embeddings(student, folder, spec)
    model = st.SentenceTransformer(folder, device="cpu")
    got = model.encode(TEXTS, convert_to_numpy=True, batch_size=8)
    assert np.abs(got - expected).max() <= 1e-5
    from export.pipeline import export_model
    from serving.runtime import EmbeddingModel

    # Pooling and normalisation: the folder's, as sentence-transformers reads them.
    report = export_model(folder, tmp_path / "onnx", quantize="none")
    assert (report["pooling"], report["normalize"]) == (spec.mode, spec.normalize)
    assert report["pooling_source"] == f"{folder}/modules.json"
    served = EmbeddingModel(tmp_path / "onnx")
    assert served.normalize == spec.normalize
    onnx = served.encode(TEXTS)
    assert np.abs(onnx - got).max() <= 1e-5
    card = (tmp_path / "onnx" / "README.md").read_text()
    assert "## ONNX export" in card and f"{spec.mode} pooling (from `modules.json`)" in card
    assert str(folder) not in card  # the card names no path of this machine


def test_export_pooling_flag_overrides_the_folder_with_a_warning(tmp_path, caplog):
    from export.pipeline import load_student, resolve_pooling

    teacher_folder = _teacher_folder(tmp_path, PoolingSpec("cls", False))
    folder, _ = _student_folder(tmp_path, teacher_folder)
    student = load_student(folder)
    assert resolve_pooling(student, None) == (PoolingSpec("cls", False), f"{folder}/modules.json")
    caplog.clear()
    with caplog.at_level("WARNING"):  # the flag changes the mode, not the normalisation
        assert resolve_pooling(student, "mean") == (PoolingSpec("mean", False), "flag")
    assert re.search(r"--pooling mean overrides the cls pooling that .*modules.json declares",
                     caplog.text)
    (tmp_path / "student" / "1_Pooling" / "config.json").write_text("{}")
    from export.errors import ExportError

    with pytest.raises(ExportError, match=r"1_Pooling/config.json: exactly one pooling_mode_"):
        resolve_pooling(student, None)


def test_a_folder_without_st_files_exports_mean_pooling(tmp_path):
    import shutil

    from export.pipeline import load_student, resolve_pooling

    teacher_folder = _teacher_folder(tmp_path, PoolingSpec("cls", True))
    folder, _ = _student_folder(tmp_path, teacher_folder)
    (tmp_path / "student" / "modules.json").unlink()
    shutil.rmtree(tmp_path / "student" / "1_Pooling")
    assert resolve_pooling(load_student(folder), None) == (PoolingSpec("mean", True), "default")
