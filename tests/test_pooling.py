"""Reading a model folder's sentence-transformers pooling, and the pooling itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.runtime import pool_and_normalize
from tf_minilm.model.pooling import PoolingError, PoolingSpec, read_pooling, sentence_embedding

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize",
     "type": "sentence_transformers.models.Normalize"},
]


def write_folder(folder, modules=MODULES, mode="mean"):
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    fields = {"pooling_mode_cls_token": mode == "cls", "pooling_mode_mean_tokens": mode == "mean",
              "pooling_mode_max_tokens": mode == "max",
              "pooling_mode_mean_sqrt_len_tokens": False}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(fields))
    return folder


def test_folders_declare_mean_or_cls_with_or_without_normalize(tmp_path):
    assert read_pooling(str(write_folder(tmp_path))) == PoolingSpec("mean", True)
    assert read_pooling(str(write_folder(tmp_path, MODULES[:2], "cls"))) == PoolingSpec("cls",
                                                                                       False)
    assert read_pooling(str(tmp_path / "missing")) == PoolingSpec("mean", True)
    assert read_pooling(str(tmp_path / "missing"), PoolingSpec("cls", False)).mode == "cls"


def test_real_teacher_is_mean_pooled_and_normalised(real_teacher_dir):
    assert read_pooling(real_teacher_dir) == PoolingSpec("mean", True)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "modules.json").write_text("{"), r"modules.json: not valid JSON"),
        (lambda f: (f / "modules.json").write_text('{"a": 1}'), "expected a list of module"),
        (lambda f: (f / "modules.json").write_text(json.dumps(MODULES[:1])),
         "expected one sentence_transformers.models.Pooling module, found 0"),
        (lambda f: (f / "1_Pooling" / "config.json").unlink(), r"1_Pooling/config.json: cannot read"),
        (lambda f: write_folder(f, mode="max"), "field 'pooling_mode_max_tokens' selects max"),
        (lambda f: (f / "1_Pooling" / "config.json").write_text("{}"),
         "exactly one pooling_mode_\\* field must be true"),
    ],
)
def test_bad_pooling_files_name_the_file_and_field(tmp_path, damage, message):
    write_folder(tmp_path)
    damage(tmp_path)
    with pytest.raises(PoolingError, match=message):
        read_pooling(str(tmp_path))


@pytest.mark.parametrize("mode", ["mean", "cls"])
def test_serving_numpy_twin_equals_the_keras_pooling(mode):
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(3, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], np.int32)
    ours = np.asarray(sentence_embedding(hidden, mask, PoolingSpec(mode, True)))
    np.testing.assert_allclose(ours, pool_and_normalize(hidden, mask, mode), atol=1e-6)
    with pytest.raises(PoolingError, match="not supported"):
        PoolingSpec("max")
