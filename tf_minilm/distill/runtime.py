"""Where and in what precision a run computes: tf.distribute strategy and dtype policy.

Owns: choosing and building the strategy (`resolve_strategy`, from TF_CONFIG and the
hardware), the chief worker (`is_chief`), the Keras precision policy
(`resolve_precision`), whether the train step is XLA-compiled (`resolve_jit_compile`) and
how much memory one chunk of the relation loss takes (`resolve_relation_chunk_bytes`).
Imports: TensorFlow, `tf_minilm.constants` and `tf_minilm.versions` (the CPU's bfloat16 flag).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import tensorflow as tf

from tf_minilm.constants import PRECISIONS, STRATEGIES
from tf_minilm.versions import cpu_has_native_bfloat16

logger = logging.getLogger(__name__)


class StrategyError(ValueError):
    """A distribution strategy or precision that this machine cannot provide."""


# ---------------------------------------------------------------------------- strategy
def _tf_config() -> dict[str, Any] | None:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise StrategyError(f"environment variable TF_CONFIG is not valid JSON ({err})") from err
    if not isinstance(value, dict) or not isinstance(value.get("cluster"), dict):
        raise StrategyError("environment variable TF_CONFIG has no 'cluster' mapping")
    return value


def _cluster_workers(tf_config: dict[str, Any] | None) -> int:
    if not tf_config:
        return 0
    cluster = tf_config["cluster"]
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def resolve_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Build the tf.distribute strategy called `name`.

    Args:
        name: "default" (no distribution), "mirrored" (all local GPUs; on a CPU-only
            host, all logical CPU devices), "multi-worker" (MultiWorkerMirroredStrategy
            from TF_CONFIG), "tpu" (TPUStrategy; TPU_NAME or a local TPU), or "auto":
            multi-worker when TF_CONFIG lists more than one worker, mirrored with more
            than one GPU, otherwise default.

    Returns:
        The strategy. Create it before any other TensorFlow work (multi-worker and TPU
        must initialise first).

    Raises:
        StrategyError: an unknown name, or hardware/environment that cannot provide it.
    """
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "auto":
        if _cluster_workers(_tf_config()) > 1:
            name = "multi-worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
        logger.info("strategy auto -> %s", name)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi-worker":
        tf_config = _tf_config()
        if tf_config is None:
            raise StrategyError(
                "strategy 'multi-worker' needs the TF_CONFIG environment variable (cluster and "
                "task of this worker); it is not set"
            )
        task = tf_config.get("task") or {}
        if "type" not in task or "index" not in task:
            raise StrategyError("TF_CONFIG has no task type/index for this worker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    # tpu
    tpu_name = os.environ.get("TPU_NAME", "")
    has_local = bool(tf.config.list_logical_devices("TPU"))
    if not tpu_name and not has_local:
        raise StrategyError(
            "strategy 'tpu' needs a TPU, but none was found (no TPU device and TPU_NAME is not "
            "set); use 'auto', 'default' or 'mirrored'"
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_name)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        raise StrategyError(f"strategy 'tpu': cannot connect to TPU {tpu_name!r} ({err})") from err
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints and logs (always true without multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    return task_type == "worker" and task_id == 0 and \
        "chief" not in resolver.cluster_spec().as_dict()


def resolve_precision(name: str = "auto", strategy: tf.distribute.Strategy | None = None) -> str:
    """The Keras dtype policy name for `name`.

    Args:
        name: "float32", "mixed_float16", "mixed_bfloat16" or "auto": mixed_float16 on a
            CUDA GPU, mixed_bfloat16 under a TPU strategy and on CPUs that multiply
            bfloat16 natively (`cpu_has_native_bfloat16`: the embedded default run took
            4:54 instead of 7:11 in float32 + XLA, same fidelity; docs/benchmarks.md, "Step speed
            and relation memory"), float32 on other CPUs.
        strategy: the strategy in use (to recognise TPUs).

    Returns:
        A Keras policy name ("float32", "mixed_float16" or "mixed_bfloat16").

    Raises:
        StrategyError: an unknown name, or float16 on a TPU.
    """
    if name not in PRECISIONS:
        raise StrategyError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    cuda_gpu = bool(tf.config.list_physical_devices("GPU")) and tf.test.is_built_with_cuda()
    if name == "auto":
        if on_tpu:
            name = "mixed_bfloat16"
        elif cuda_gpu:
            name = "mixed_float16"
        elif on_cpu_only(strategy) and cpu_has_native_bfloat16():
            name = "mixed_bfloat16"
        else:
            name = "float32"
        logger.info("precision auto -> %s", name)
    if name == "mixed_float16" and on_tpu:
        raise StrategyError("precision 'mixed_float16' is not supported on TPU; use mixed_bfloat16")
    if name == "mixed_float16" and not cuda_gpu:
        logger.warning("precision mixed_float16 without a CUDA GPU: float16 matmuls on CPU are "
                       "about 2x slower than float32")
    return name


def on_cpu_only(strategy: tf.distribute.Strategy | None = None) -> bool:
    """True when the run computes on CPUs: no GPU visible and not a TPU strategy."""
    return not tf.config.list_logical_devices("GPU") and not isinstance(
        strategy, tf.distribute.TPUStrategy)


def resolve_jit_compile(jit_compile: bool | None, strategy: tf.distribute.Strategy,
                        policy: str = "float32") -> bool | str:
    """XLA for the train step: `jit_compile` when set; else off for mixed_bfloat16 on CPUs,
    on with one replica, Keras' "auto" with several.

    XLA's CPU backend does not use the CPU's bfloat16 matmul kernels that oneDNN does
    (docs/benchmarks.md, "Step speed and relation memory": at 32 x 128 the bfloat16 step is 1.7x
    faster without XLA); in
    float32 XLA stays on as before (within noise of oneDNN at the default 32 x 64).
    XLA with MirroredStrategy over logical CPU devices fails.
    """
    if jit_compile is not None:
        return jit_compile
    if policy == "mixed_bfloat16" and on_cpu_only(strategy):
        return False
    if strategy.num_replicas_in_sync == 1 and not isinstance(
        strategy, tf.distribute.TPUStrategy
    ):
        return True
    return "auto"


# One chunk's [pairs, seq, seq] float32 relation tensor: on a CPU small enough that a
# step's working set (a few such tensors) stays in cache (of 0.25 to 64 MiB, 2 MiB was
# the fastest for the loss at 32 x 128, with XLA and without); on a GPU large enough that
# each loop step launches kernels over many (example, head) pairs (argued, not measured).
CPU_RELATION_CHUNK_MB = 2
GPU_RELATION_CHUNK_MB = 64


def resolve_relation_chunk_bytes(chunk_mb: int | None) -> int:
    """Bytes of one relation chunk: `chunk_mb` MiB when given, else the device's default.

    Args:
        chunk_mb: a positive number of MiB, or None for 64 with a GPU, 2 without.

    Returns:
        The budget in bytes.
    """
    if chunk_mb is None:
        chunk_mb = GPU_RELATION_CHUNK_MB if tf.config.list_logical_devices("GPU") \
            else CPU_RELATION_CHUNK_MB
    return int(chunk_mb) * 2**20
