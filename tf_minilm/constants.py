"""Names shared by every layer of tf-minilm: choices, tensor names, file names.

Owns: one definition of each constant that more than one module (or package: `export`,
`serving`) needs. Imports: nothing (no TensorFlow, no other tf-minilm module), so the
TF-free serving package and the CLI's argument parsers can use it.
"""

from __future__ import annotations

# ------------------------------------------------------------------ model inputs/outputs
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
"""Inputs of an encoder, in this order (Keras model, ONNX graph, serving feeds)."""
REQUIRED_INPUTS = INPUT_NAMES[:2]
"""Inputs every exported graph must have (token types may be folded away)."""
EMBEDDING_OUTPUTS = ("last_hidden_state", "sentence_embedding")
"""Outputs of an exported embedding graph."""
CLASSIFIER_OUTPUTS = ("logits",)
"""Outputs of an exported classifier graph (unnormalised class scores)."""
EXPORT_KINDS = ("embedding", "classifier")
"""What an export folder serves: sentence embeddings or class labels."""

# ---------------------------------------------------------------------------- pooling
POOLING_MODES = ("mean", "cls")
"""Sentence-embedding pooling (sentence-transformers' `pooling_mode_*_tokens`)."""
CLASSIFIER_POOLINGS = ("cls", "mean", "pooler")
"""What a classification head reads: [CLS], the masked mean, or BERT's tanh pooler."""

# ---------------------------------------------------------------------------- distill
METHODS = ("minilmv2", "minilm")
"""The papers' relation objectives (also the relation terms of a loss spec)."""
ALIGNMENT_TERMS = ("embedding_mse", "embedding_cosine", "hidden_mse")
"""Objective terms that match the student's outputs to the teacher's."""
QKV_LETTERS = "qkv"
"""Letters of a MiniLMv2 relation (`qq`, `kk`, `vv`, or a mix like `qk`)."""
STRATEGIES = ("auto", "default", "mirrored", "multi-worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STUDENT_INITS = ("random", "teacher-layers", "prune")
"""How a student's weights start: random, or copied from chosen teacher layers."""
INIT_CHOICES = ("auto", *STUDENT_INITS)
"""`--init`: a student init, or auto (teacher layers when the widths allow)."""
STUDENT_LAYOUTS = ("teacher", "bert")
"""`--student-layout`: the teacher's architecture, or BERT's (absolute positions from 0,
no relative position bias) with the teacher's vocabulary and tokenizer."""
PACKING_MODES = ("packed", "per-document")
DOC_SEPARATORS = ("line", "blank-line", "file")

# ------------------------------------------------------------------------------ files
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""Weight files of an HF folder, in order of preference."""
SAFETENSORS_FILE = HF_WEIGHT_FILES[0]
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
"""Tokenizer files copied beside an exported model (those present)."""
ONNX_MODEL_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
EXPORT_REPORT_FILE = "export_report.json"
LABELS_FILE = "labels.json"
"""An exported classifier's label names, in logit order (`{"labels": [...]}`)."""
ST_MODULES_FILE = "modules.json"
"""sentence-transformers' list of a folder's modules (its pooling, its normalisation)."""
RUN_FILES = ("config.json", "checkpoints", "metrics.jsonl")
"""Files whose presence marks a folder as holding a distillation run."""
