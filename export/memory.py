"""Keeping a base-size model's memory to about one copy of its weights during export.

Owns: `free_tensorflow_memory_on_release`, `release_freed_heap` and `weights_on_disk` /
`read_weights_back`. Imports: onnx (the latter two), nothing of the project.

TensorFlow's oneDNN build (the x86 default) allocates tensors through its own caching
allocator, and its BFC allocator (which `tf-minilm` turns on for training) caches too:
neither hands memory back, so a base-size Keras model the export no longer needs stays
resident when dropped (a 440 MB model's variables: 0.4 GB kept). TensorFlow reads
`TF_ONEDNN_USE_SYSTEM_ALLOCATOR` and `TF_CPU_ALLOCATOR_USE_BFC` once, when it starts;
set beforehand, tensors come from malloc and go back with it
(`free_tensorflow_memory_on_release`).

glibc's malloc keeps the pages of freed blocks for reuse instead of returning them, so
after a stage that allocated and freed a base-size model's worth of buffers (conversion,
fusion, the float32 parity session) the process stays as large as at that stage's
peak, and the next stage's memory comes on top (docs/benchmarks.md#export-memory has
the figures). `malloc_trim(0)` returns the free pages. No kept library exposes it, so
it is called through `ctypes`; on a C library without it (musl, macOS) nothing happens.

A tool that copies a whole ONNX model (onnxruntime's optimizer re-serialises it in each
of its symbolic shape inferences) copies only its graph when the large weights are ONNX
external data in a file: `weights_on_disk` moves them there for a block,
`read_weights_back` returns them, so the result is the same bytes as without the detour.
It spares the tool's copies, not the model's own memory: Python's protobuf (upb) keeps a
message's memory until the whole message is freed, so clearing the weights returns
nothing and reading them back adds a copy (docs/benchmarks.md#export-memory). Where the
model can be dropped instead (a file handed to another process), it is saved with
`onnx.save(..., save_as_external_data=True)` in `WEIGHTS_FILE` above
`LARGE_INITIALIZER_BYTES` and dropped (`export.quantize.write_variant`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

LARGE_INITIALIZER_BYTES = 1 << 16
"""Initializers at least this large go to the external data file."""
WEIGHTS_FILE = "weights.bin"
"""The external data file, beside the model file that refers to it."""


ALLOCATOR_SETTINGS = {"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "true",
                      "TF_CPU_ALLOCATOR_USE_BFC": "false"}
"""The environment that has TensorFlow allocate tensors with the system's malloc."""


def free_tensorflow_memory_on_release() -> bool:
    """Have TensorFlow allocate tensors with the system's malloc (`ALLOCATOR_SETTINGS`,
    where the environment does not say otherwise), so that the memory of dropped
    variables can be returned by `release_freed_heap`.

    Returns:
        Whether it takes effect: False once TensorFlow is imported (it reads the
        variables as it starts), and when the environment set them otherwise.

    Example:
    >>> free_tensorflow_memory_on_release()  # first thing, before TensorFlow is imported
    True
    """
    for name, value in ALLOCATOR_SETTINGS.items():
        os.environ.setdefault(name, value)
    return "tensorflow" not in sys.modules and all(
        os.environ[name].lower() == value for name, value in ALLOCATOR_SETTINGS.items())


def release_freed_heap() -> bool:
    """Collect garbage, then return the heap's free pages to the operating system.

    Returns:
        Whether any memory was returned (False where the C library cannot).

    Example:
    >>> release_freed_heap()  # after dropping a large model
    True
    """
    gc.collect()
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


@contextlib.contextmanager
def weights_on_disk(model: Any, beside: str | None = None, chdir: bool = False
                    ) -> Iterator[str]:
    """Move `model`'s large initializers into a temporary folder for the block.

    The initializers become ONNX external data in `WEIGHTS_FILE` (their `raw_data`
    cleared): a model saved in the folder meanwhile loads with them (onnxruntime resolves
    external data against the model file's folder). The folder is removed afterwards;
    call `read_weights_back` inside the block to keep the model usable.

    Args:
        model: an `onnx.ModelProto`, changed in place.
        beside: where the temporary folder is made (None: the system's temporary folder).
        chdir: also run the block in the folder, for code that reads external data
            relative to the working directory (`onnx.numpy_helper.to_array` without a
            base folder, as onnxruntime's fusions call it); process-wide, so not for
            threads of one process that do other work meanwhile.

    Yields:
        The folder.
    """
    from onnx import external_data_helper

    folder = tempfile.mkdtemp(prefix=".weights-", dir=beside)
    try:
        external_data_helper.convert_model_to_external_data(
            model, all_tensors_to_one_file=True, location=WEIGHTS_FILE,
            size_threshold=LARGE_INITIALIZER_BYTES)
        external_data_helper.write_external_data_tensors(model, folder)
        with contextlib.chdir(folder) if chdir else contextlib.nullcontext():
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_weights_back(model: Any, folder: str) -> None:
    """Load the external data of `weights_on_disk` into `model`, leaving the tensors as
    they were before (no explicit `data_location` field): saved, it is the same bytes as
    without the detour."""
    from onnx import external_data_helper

    external_data_helper.load_external_data_for_model(model, os.fspath(folder))
    for tensor in model.graph.initializer:
        if tensor.HasField("data_location"):
            tensor.ClearField("data_location")
