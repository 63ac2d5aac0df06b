"""The sentence-transformers files of a model folder, so `SentenceTransformer(folder)` loads it.

Owns: what a student folder holds besides the HF checkpoint: `modules.json`
(Transformer -> Pooling -> Normalize when the model normalises),
`1_Pooling/config.json`, an empty `2_Normalize/`, `sentence_bert_config.json` (max
length) and the teacher's `config_sentence_transformers.json` (prompts, similarity).
Reading a folder's pooling back is `model.pooling.read_pooling`'s.
Imports: `constants`, `model.pooling`, `hf.errors`.

sentence-transformers describes a model by these JSON files; its own writer needs the
model loaded in PyTorch, so they are written here from the run's pooling and sizes,
carrying over the teacher's values where it has them (its max length, its prompts).
"""

from __future__ import annotations

import json
import os
from typing import Any

from tf_minilm.constants import ST_MODULES_FILE
from tf_minilm.hf.errors import CheckpointError
from tf_minilm.model.pooling import PoolingSpec

POOLING_FOLDER = "1_Pooling"
NORMALIZE_FOLDER = "2_Normalize"
ST_CONFIG_FILE = "sentence_bert_config.json"
ST_MODEL_CONFIG_FILE = "config_sentence_transformers.json"
_POOLING_FIELDS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}
_ALL_POOLING_FIELDS = ("pooling_mode_cls_token", "pooling_mode_mean_tokens",
                       "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                       "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def _read_object(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def sentence_transformers_files(pooling: PoolingSpec, hidden_size: int, max_seq_length: int,
                                teacher_folder: str | None = None) -> dict[str, str]:
    """{relative path: text} of the sentence-transformers files for a model.

    Args:
        pooling: the model's pooling (the teacher's, as the run used it).
        hidden_size: the model's width (`word_embedding_dimension`).
        max_seq_length: the longest input in tokens, used when the teacher folder has
            no `sentence_bert_config.json` (the teacher's value wins: the student keeps
            its positions).
        teacher_folder: the teacher's folder to carry values over from, or None.

    Returns:
        Files to write beside `config.json`; `2_Normalize/` (a folder without files)
        is listed as the key "2_Normalize/" with empty text when the model normalises.

    Raises:
        CheckpointError: a teacher file that is not a JSON object.
    """
    st_config: dict[str, Any] = {"max_seq_length": int(max_seq_length), "do_lower_case": False}
    model_config: dict[str, Any] | None = None
    if teacher_folder is not None:
        teacher_st = _read_object(os.path.join(teacher_folder, ST_CONFIG_FILE))
        if teacher_st:
            st_config.update(teacher_st)
        model_config = _read_object(os.path.join(teacher_folder, ST_MODEL_CONFIG_FILE))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_FOLDER,
         "type": "sentence_transformers.models.Pooling"},
    ]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": NORMALIZE_FOLDER,
                        "type": "sentence_transformers.models.Normalize"})
    pooling_config: dict[str, Any] = {"word_embedding_dimension": int(hidden_size)}
    pooling_config.update({field: _POOLING_FIELDS[pooling.mode] == field
                           for field in _ALL_POOLING_FIELDS})
    pooling_config["include_prompt"] = True
    files = {
        ST_MODULES_FILE: json.dumps(modules, indent=2) + "\n",
        f"{POOLING_FOLDER}/config.json": json.dumps(pooling_config, indent=2) + "\n",
        ST_CONFIG_FILE: json.dumps(st_config, indent=2) + "\n",
    }
    if model_config is not None:
        files[ST_MODEL_CONFIG_FILE] = json.dumps(model_config, indent=2) + "\n"
    if pooling.normalize:
        files[f"{NORMALIZE_FOLDER}/"] = ""
    return files


def write_files(folder: str, files: dict[str, str]) -> None:
    """Write `files` ({relative path: text}; a key ending in "/" is an empty folder) under
    `folder`, which is a staging folder (`fileio.staged_folder`), so nothing is half-written.

    Args:
        folder: the folder being staged.
        files: from `sentence_transformers_files`.
    """
    for relative, text in files.items():
        path = os.path.join(folder, *relative.rstrip("/").split("/"))
        if relative.endswith("/"):
            os.makedirs(path, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
