"""Training plumbing: optimizer, strategies, precision, checkpoints, resume, guards, logs.

The tests marked `slow` start subprocesses: MirroredStrategy over 2 logical CPUs (TF
must be configured before it initialises), a 2-process MultiWorkerMirroredStrategy
cluster on localhost, and a run killed with SIGKILL and resumed.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from _multiworker_worker import eval_dataset, make_dataset, tiny_student, tiny_teacher
from _multiworker_worker import train as train_in_process

from tf_minilm.distill.assistant import distill_with_assistant
from tf_minilm.distill.callbacks import NonFiniteLossError
from tf_minilm.distill.optimizer import make_optimizer, no_decay_variables
from tf_minilm.distill.options import TrainOptions
from tf_minilm.distill.runtime import StrategyError, resolve_precision, resolve_strategy
from tf_minilm.distill.state import CheckpointManager, TrainingCheckpointError
from tf_minilm.distill.trainer import DataExhaustedError, learning_rate_at, run_distillation
from tf_minilm.model.encoder import Encoder
from tf_minilm.schedules import WarmupLinearDecay

WORKER = os.path.join(os.path.dirname(__file__), "_multiworker_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_tiny(dropout: float = 0.1):
    def build():
        teacher = tiny_teacher(0, dropout=dropout)
        return teacher, tiny_student(teacher, 1)

    return build


def options(**overrides) -> TrainOptions:
    # XLA off: compiling each tiny run costs more than the run (the default, XLA on for
    # one replica, is exercised by the metrics test and the SIGKILL test).
    values = {"steps": 30, "learning_rate": 3e-3, "checkpoint_every": 10, "log_every": 10,
              "relation_heads": 4, "loss": "minilmv2", "resume": True, "strategy": "default", "precision": "float32",
              "jit_compile": False}
    values.update(overrides)
    return TrainOptions(**values)


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


# --------------------------------------------------------------------------- optimizer
def test_no_decay_variables_are_exactly_biases_and_layer_norms():
    student = tiny_student(tiny_teacher(0), 1)
    excluded = {v.path for v in no_decay_variables(student)}
    for variable in student.trainable_weights:
        is_norm_or_bias = variable.path.endswith(("/bias", "/gamma", "/beta"))
        assert (variable.path in excluded) == is_norm_or_bias, variable.path
    assert student.embeddings.word_embeddings.path not in excluded
    assert student.embeddings.layer_norm.gamma.path in excluded


def test_weight_decay_skips_excluded_variables():
    student = tiny_student(tiny_teacher(0), 1)
    variables = student.trainable_weights
    for v in variables:  # non-zero biases and norms, so decay would show
        v.assign(np.full(v.shape, 0.5, "float32"))
    optimizer = make_optimizer(0.1, weight_decay=0.2, no_decay=no_decay_variables(student))
    optimizer.apply([tf.zeros(v.shape) for v in variables], variables)  # Adam part is 0
    excluded = {v.path for v in no_decay_variables(student)}
    for v in variables:
        expected = 0.5 if v.path in excluded else 0.5 * (1 - 0.1 * 0.2)
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6, err_msg=v.path)
    config = optimizer.get_config()
    assert (config["beta_1"], config["beta_2"], config["epsilon"]) == (0.9, 0.999, 1e-6)


# --------------------------------------------------------------------- strategy/precision
def test_resolve_strategy_choices_and_errors(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    assert resolve_strategy("default") is tf.distribute.get_strategy()
    if len(tf.config.list_physical_devices("GPU")) < 2:
        assert resolve_strategy("auto") is tf.distribute.get_strategy()
    with pytest.raises(StrategyError, match="unknown strategy 'gpu'"):
        resolve_strategy("gpu")
    with pytest.raises(StrategyError, match="'tpu' needs a TPU, but none was found"):
        resolve_strategy("tpu")
    with pytest.raises(StrategyError, match="TF_CONFIG .* not set"):
        resolve_strategy("multi-worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(StrategyError, match="TF_CONFIG is not valid JSON"):
        resolve_strategy("auto")


def test_resolve_precision():
    from tf_minilm.versions import cpu_has_native_bfloat16

    gpu = bool(tf.config.list_physical_devices("GPU"))
    expected = "mixed_float16" if gpu else \
        "mixed_bfloat16" if cpu_has_native_bfloat16() else "float32"
    assert resolve_precision("auto") == expected
    for name in ("float32", "mixed_bfloat16"):
        assert resolve_precision(name) == name
    with pytest.raises(StrategyError, match="unknown precision 'fp8'"):
        resolve_precision("fp8")


def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path):
    from tf_minilm.versions import cpu_has_native_bfloat16

    cases = {"flags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n": True,
             "flags\t\t: fpu sse2 amx_tile amx_bf16 amx_int8\n": True,
             "flags\t\t: fpu sse2 avx2 avx512f\n": False,
             "processor\t: 0\n": False}
    for index, (text, expected) in enumerate(cases.items()):
        path = tmp_path / f"cpuinfo{index}"
        path.write_text("processor\t: 0\n" + text)
        assert cpu_has_native_bfloat16(str(path)) is expected, text
    assert cpu_has_native_bfloat16(str(tmp_path / "missing")) is False


def test_xla_is_off_for_bfloat16_on_cpus_unless_asked_for():
    from tf_minilm.distill.runtime import resolve_jit_compile

    strategy = tf.distribute.get_strategy()
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("the CPU rule needs a machine without a GPU")
    assert resolve_jit_compile(None, strategy, "mixed_bfloat16") is False
    assert resolve_jit_compile(None, strategy, "float32") is True
    assert resolve_jit_compile(True, strategy, "mixed_bfloat16") is True
    assert resolve_jit_compile(False, strategy, "float32") is False


def test_relation_chunk_default_is_per_device():
    from tf_minilm.distill.runtime import resolve_relation_chunk_bytes

    expected = 64 if tf.config.list_logical_devices("GPU") else 2
    assert resolve_relation_chunk_bytes(None) == expected * 2**20
    assert resolve_relation_chunk_bytes(5) == 5 * 2**20


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"steps": 0}, "steps must be a positive integer"),
     ({"warmup_steps": 30}, r"warmup_steps must be an integer in \[0, TrainOptions.steps=30\)"),
     ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0"),
     ({"weight_decay": 1.0}, r"weight_decay must be a finite number >= 0 and < 1"),
     ({"strategy": "gpu"}, "strategy is 'gpu'"),
     ({"precision": "half"}, "precision is 'half'"),
     ({"method": "v3"}, "method is 'v3'"),
     ({"log_every": 0}, "log_every"),
     ({"clipnorm": -1.0}, "clipnorm"),
     ({"relation_chunk_mb": 0}, "relation_chunk_mb must be a positive integer")],
)
def test_train_options_errors_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        options(**overrides).resolve()


def test_default_warmup_is_ten_percent_and_clipnorm_zero_is_off():
    assert options(steps=200).resolve().warmup_steps == 20
    assert options(clipnorm=0.0).resolve().optimizer.clipnorm is None
    assert learning_rate_at(options(steps=100, warmup_steps=10).resolve(), 10) == \
        pytest.approx(3e-3)


# ------------------------------------------------------------------------ checkpoints
class _Var:
    """Stand-in variable for CheckpointManager (path, shape, dtype, value, assign)."""

    def __init__(self, path, value):
        self.path, self.value = path, np.asarray(value)
        self.shape, self.dtype = self.value.shape, self.value.dtype

    def assign(self, value):
        self.value = np.asarray(value)


def test_checkpoint_manager_rotates_atomically_and_refuses_nan(tmp_path):
    manager = CheckpointManager(tmp_path / "ck", keep=2)
    student = [_Var("w", np.ones((2, 3), "float32")), _Var("seed", np.array([7, 1], "int64"))]
    opt = [_Var("iterations", np.array(5, "int64"))]
    for step in (10, 20, 30):
        manager.save(step, student, opt, {"note": step})
    assert [s for s, _ in manager.checkpoints()] == [20, 30]
    assert not glob.glob(str(tmp_path / "ck" / ".*"))  # no temporaries left
    student[0].value = np.full((2, 3), np.nan, "float32")
    with pytest.raises(TrainingCheckpointError, match="refusing to save step 40: student variable w"):
        manager.save(40, student, opt, {})
    assert manager.latest().endswith("ckpt-00000030.npz")
    restored = [_Var("w", np.zeros((2, 3), "float32")), _Var("seed", np.zeros(2, "int64"))]
    header = manager.restore(manager.latest(), restored, [_Var("it", np.array(0, "int64"))])
    assert header["step"] == 30 and header["note"] == 30
    np.testing.assert_array_equal(restored[0].value, 1.0)
    np.testing.assert_array_equal(restored[1].value, [7, 1])
    with pytest.raises(TrainingCheckpointError, match=r"student variable w is float32\[2, 3\]"):
        manager.restore(manager.latest(), [_Var("w", np.zeros((3, 3), "float32")), restored[1]],
                        opt)
    with pytest.raises(TrainingCheckpointError, match="holds 1 optimizer variables"):
        manager.restore(manager.latest(), restored, opt * 2)
    (tmp_path / "ck" / ".ckpt-dead.tmp").write_bytes(b"half")
    (tmp_path / "ck" / "ckpt-00000099.npz").write_bytes(b"garbage")
    manager.remove_stale_temporaries()
    assert not (tmp_path / "ck" / ".ckpt-dead.tmp").exists()
    with pytest.raises(TrainingCheckpointError, match="not a readable training checkpoint"):
        manager.restore(manager.latest(), restored, opt)


# ------------------------------------------------------------------------------- runs
@pytest.mark.slow
def test_run_writes_metrics_tensorboard_checkpoints_and_eval(tmp_path):
    result = run_distillation(
        build_tiny(), make_dataset, tmp_path,
        options(keep_checkpoints=2, eval_every=20, jit_compile=None),
        eval_dataset=eval_dataset(2), verbose=0,
    )
    assert result.step == 30 and result.precision == "float32"
    assert result.distiller.jit_compile is True  # auto: XLA with a single replica
    assert [s for s, _ in CheckpointManager(tmp_path / "checkpoints").checkpoints()] == [20, 30]
    records = read_jsonl(str(tmp_path / "metrics.jsonl"))
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in train] == [10, 20, 30]
    assert [r["step"] for r in evals] == [20, 30]
    schedule = WarmupLinearDecay(3e-3, 3, 30)
    for record in train:
        assert set(record) >= {"loss", "loss_qq", "loss_kk", "loss_vv", "learning_rate",
                               "tokens_per_s", "elapsed_s"}
        assert record["loss"] == pytest.approx(
            record["loss_qq"] + record["loss_kk"] + record["loss_vv"], rel=1e-5)
        assert record["learning_rate"] == pytest.approx(float(schedule(record["step"] - 1)))
        assert record["tokens_per_s"] > 0
    assert result.eval_metrics["loss"] == pytest.approx(evals[-1]["eval_loss"])
    assert result.train_metrics == train[-1]
    saved = json.loads((tmp_path / "train_options.json").read_text())
    assert saved["fingerprint"]["warmup_steps"] == 3
    # TensorBoard scalars are readable with TensorFlow alone
    tags = {}
    for path in glob.glob(str(tmp_path / "tensorboard" / "events.*")):
        for raw in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    assert tags["loss"] == [10, 20, 30] and tags["learning_rate"] == [10, 20, 30]
    assert tags["tokens_per_s"] == [10, 20, 30] and tags["eval_loss"] == [20, 30]


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    straight = run_distillation(build_tiny(), make_dataset, tmp_path / "a", options(steps=40),
                                verbose=0)

    class Crash(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = 0

        def on_train_batch_end(self, batch, logs=None):
            self.seen += 1
            if self.seen == 25:
                raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        run_distillation(build_tiny(), make_dataset, tmp_path / "b", options(steps=40),
                         callbacks=[Crash()], verbose=0)
    starts = []

    def dataset_from(start):
        starts.append(start)
        return make_dataset(start)

    resumed = run_distillation(build_tiny(), dataset_from, tmp_path / "b", options(steps=40),
                               verbose=0)
    assert starts == [20] and resumed.step == 40
    for a, b in zip(straight.student.weights, resumed.student.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6)
    for a, b in zip(straight.distiller.optimizer.variables,
                    resumed.distiller.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.asarray(a.numpy()), np.asarray(b.numpy()), atol=1e-6)
    a_lines = read_jsonl(str(tmp_path / "a" / "metrics.jsonl"))
    b_lines = read_jsonl(str(tmp_path / "b" / "metrics.jsonl"))
    assert [r["step"] for r in b_lines] == [10, 20, 30, 40]
    for x, y in zip(a_lines, b_lines, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
        assert x["learning_rate"] == y["learning_rate"]
    assert float(resumed.distiller.optimizer.learning_rate) == pytest.approx(
        float(straight.distiller.optimizer.learning_rate))
    # a finished run resumes to itself without training
    again = run_distillation(build_tiny(), dataset_from, tmp_path / "b", options(steps=40),
                             verbose=0)
    assert again.step == 40 and starts == [20]


def test_resume_with_different_settings_is_refused(tmp_path):
    run_distillation(build_tiny(), make_dataset, tmp_path, options(steps=10, checkpoint_every=5),
                     verbose=0)
    with pytest.raises(TrainingCheckpointError, match=r"learning_rate=0\.003 in the checkpoint, 0\.001"):
        run_distillation(build_tiny(), make_dataset, tmp_path,
                         options(steps=10, checkpoint_every=5, learning_rate=1e-3), verbose=0)
    with pytest.raises(TrainingCheckpointError, match="already holds checkpoints.*step 10"):
        run_distillation(build_tiny(), make_dataset, tmp_path,
                         options(steps=10, checkpoint_every=5, resume=False), verbose=0)
    assert [s for s, _ in CheckpointManager(tmp_path / "checkpoints").checkpoints()] == [5, 10]


def test_nan_guard_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    class Poison(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = 0

        def on_train_batch_end(self, batch, logs=None):
            self.seen += 1
            if self.seen == 12:
                gamma = self.model.student.embeddings.layer_norm.gamma
                gamma.assign(np.full(gamma.shape, np.nan, "float32"))

    with pytest.raises(NonFiniteLossError) as err:
        run_distillation(build_tiny(), make_dataset, tmp_path,
                         options(checkpoint_every=5, log_every=5), callbacks=[Poison()], verbose=0)
    message = str(err.value)
    assert "non-finite loss at step 13" in message and "loss=nan" in message
    assert "ckpt-00000010.npz" in message
    manager = CheckpointManager(tmp_path / "checkpoints")
    assert [s for s, _ in manager.checkpoints()] == [5, 10]
    student_values, optimizer_values, _ = manager.read(manager.latest())
    assert all(np.all(np.isfinite(v)) for v in student_values + optimizer_values
               if np.issubdtype(v.dtype, np.floating))
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [5, 10]


def test_huge_learning_rate_is_caught_by_the_guard(tmp_path):
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step"):
        run_distillation(build_tiny(), make_dataset, tmp_path,
                         options(steps=200, learning_rate=1e30, warmup_steps=0, clipnorm=None,
                                 checkpoint_every=1000), verbose=0)
    assert CheckpointManager(tmp_path / "checkpoints").checkpoints() == []


@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_short_dataset_raises_after_saving_the_last_step(tmp_path):
    with pytest.raises(DataExhaustedError, match="ended after global step 7 of 10"):
        run_distillation(build_tiny(), lambda start: make_dataset(start).take(7), tmp_path,
                         options(steps=10), verbose=0)
    assert CheckpointManager(tmp_path / "checkpoints").latest().endswith("ckpt-00000007.npz")


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_without_nan_and_restores_the_policy(tmp_path, precision):
    try:
        result = run_distillation(build_tiny(), make_dataset, tmp_path,
                                  options(steps=8, log_every=4, checkpoint_every=4,
                                          precision=precision), verbose=0)
        assert keras.mixed_precision.global_policy().name == "float32"
        assert result.student.dtype_policy.name == precision
        assert result.student.compute_dtype == precision.split("_")[1]
        assert all(v.dtype == "float32" for v in result.student.trainable_weights)
        records = read_jsonl(str(tmp_path / "metrics.jsonl"))
        assert [r["step"] for r in records] == [4, 8]
        for record in records:
            assert np.isfinite(record["loss"]) and record["loss"] > 0
        if precision == "mixed_float16":
            assert isinstance(result.distiller.optimizer, keras.optimizers.LossScaleOptimizer)
            assert records[-1]["loss_scale"] > 1
        # the loss scale state is checkpointed and restored
        header = CheckpointManager.read(result.checkpoint)[2]
        assert len(header["optimizer_variables"]) == len(result.distiller.optimizer.variables)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_teacher_assistant_runs_both_stages(tmp_path):
    teacher_holder = {}

    def build_teacher():
        teacher_holder["teacher"] = tiny_teacher(0)
        return teacher_holder["teacher"]

    result = distill_with_assistant(
        build_teacher, make_dataset, tmp_path, student_layers=1, student_hidden=16,
        student_heads=2, options=options(steps=12, checkpoint_every=6, log_every=6),
        assistant_steps=8, eval_dataset=eval_dataset(2), verbose=0,
    )
    assistant, student = result.assistant, result.student
    assert isinstance(assistant, Encoder) and isinstance(student, Encoder)
    assert (assistant.config.num_hidden_layers, assistant.config.hidden_size,
            assistant.config.num_attention_heads, assistant.config.intermediate_size) == (2, 16, 2, 64)
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (1, 16)
    assert result.assistant_stage.step == 8 and result.student_stage.step == 12
    assert result.student_stage.teacher.config == assistant.config
    assert CheckpointManager(tmp_path / "assistant" / "checkpoints").latest().endswith("08.npz")
    assert CheckpointManager(tmp_path / "student" / "checkpoints").latest().endswith("12.npz")
    # stage two's teacher is a frozen copy of the trained assistant
    for a, b in zip(result.student_stage.teacher.weights, assistant.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert assistant.trainable


# ------------------------------------------------------------------- subprocess tests
def _run_worker(mode: str, args: dict, env: dict | None = None, timeout: float = 240) -> dict:
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    proc = subprocess.run([sys.executable, WORKER, mode, json.dumps(args)], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_mirrored_two_cpu_replicas_step_equals_single_device_step():
    # clipnorm well below the gradient norm, so the cross-replica clipping is exercised
    out = _run_worker("mirrored-step", {"clipnorm": 0.01})
    assert out["grad_norm"] > 0.01  # clipping was active
    assert out["moved"] > 1e-3  # the step changed the weights
    assert out["max_abs_diff"] <= 1e-6, out
    assert out["loss_mirrored"] == pytest.approx(out["loss_single"], abs=1e-6)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_two_processes_match_a_single_process(tmp_path):
    # XLA off on both sides: this compares distribution, not compilers
    run_options = {"steps": 6, "learning_rate": 3e-3, "checkpoint_every": 3, "log_every": 3,
                   "relation_heads": 4, "loss": "minilmv2", "resume": True, "precision": "float32", "jit_compile": False}
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    args = {"output_dir": str(tmp_path / "mw"), "dropout": 0.0, "weights_out": str(tmp_path / "mw.npz"),
            "options": {**run_options, "strategy": "multi-worker"}}
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, WORKER, "train", json.dumps(args)], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [proc.communicate(timeout=240) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    # The single-process reference runs here, in the test's own process.
    single = train_in_process({"output_dir": str(tmp_path / "single"), "dropout": 0.0,
                               "weights_out": str(tmp_path / "single.npz"),
                               "options": {**run_options, "strategy": "default"}})
    assert single["step"] == 6
    multi, reference = np.load(tmp_path / "mw.npz"), np.load(tmp_path / "single.npz")
    # float32 sums in a different order (two half-batch all-reduced): observed ~1e-8
    for key in reference:
        np.testing.assert_allclose(multi[key], reference[key], rtol=0, atol=1e-6, err_msg=key)
    assert (tmp_path / "mw" / "checkpoints" / "ckpt-00000006.npz").exists()
    chief_lines = read_jsonl(str(tmp_path / "mw" / "metrics.jsonl"))
    single_lines = read_jsonl(str(tmp_path / "single" / "metrics.jsonl"))
    assert [r["step"] for r in chief_lines] == [3, 6]
    for x, y in zip(chief_lines, single_lines, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(tmp_path):
    # default jit_compile: XLA on (one replica), so exact resume is checked under XLA
    run_options = {"steps": 40, "learning_rate": 3e-3, "checkpoint_every": 10, "log_every": 5,
                   "relation_heads": 4, "loss": "minilmv2", "resume": True, "strategy": "default", "precision": "float32"}
    # One process runs the uninterrupted run a, then run b until it is killed at step 25.
    marker = tmp_path / "hung"
    straight_args = {"output_dir": str(tmp_path / "a"), "options": run_options,
                     "weights_out": str(tmp_path / "a.npz")}
    args = {"output_dir": str(tmp_path / "b"), "options": run_options, "hang_at": 25,
            "marker": str(marker), "weights_out": str(tmp_path / "b.npz"),
            "first": straight_args}
    proc = subprocess.Popen([sys.executable, WORKER, "train", json.dumps(args)], cwd=ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None, "the run ended before reaching step 25"
            assert time.monotonic() < deadline, "timed out waiting for step 25"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        printed, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    straight = json.loads(printed.split("RESULT-FIRST ", 1)[1].splitlines()[0])
    assert straight["step"] == 40
    manager = CheckpointManager(tmp_path / "b" / "checkpoints")
    assert [s for s, _ in manager.checkpoints()][-1] == 20

    resumed = _run_worker("train", {"output_dir": str(tmp_path / "b"), "options": run_options,
                                    "weights_out": str(tmp_path / "b.npz")})
    assert resumed["step"] == 40
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    # dropout is on: its seed state is part of the checkpoint. Same ops, same order,
    # same thread count on CPU, so the weights are bitwise equal (contract: <= 1e-6).
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    a_lines = read_jsonl(str(tmp_path / "a" / "metrics.jsonl"))
    b_lines = read_jsonl(str(tmp_path / "b" / "metrics.jsonl"))
    assert [r["step"] for r in b_lines] == list(range(5, 41, 5))  # each step once
    for x, y in zip(a_lines, b_lines, strict=True):  # same batches, same order
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
        assert x["learning_rate"] == y["learning_rate"]



@pytest.mark.slow
def test_mirrored_checkpoint_resume_matches_an_uninterrupted_mirrored_run(tmp_path):
    run_options = {"steps": 12, "learning_rate": 3e-3, "checkpoint_every": 4, "log_every": 4,
                   "relation_heads": 4, "loss": "minilmv2", "resume": True, "strategy": "mirrored", "precision": "float32"}
    common = {"options": run_options, "logical_cpus": 2}  # dropout on (0.1)
    # One process runs the uninterrupted run a, then run b, which crashes after step 6.
    straight_args = {**common, "output_dir": str(tmp_path / "a"),
                     "weights_out": str(tmp_path / "a.npz")}
    crashed = subprocess.run(
        [sys.executable, WORKER, "train", json.dumps(
            {**common, "output_dir": str(tmp_path / "b"), "crash_at": 6,
             "first": straight_args})],
        cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True,
        text=True, timeout=240)
    assert crashed.returncode == 3, crashed.stderr[-3000:]
    straight = json.loads(crashed.stdout.split("RESULT-FIRST ", 1)[1].splitlines()[0])
    assert straight["replicas"] == 2 and straight["step"] == 12
    assert CheckpointManager(tmp_path / "b" / "checkpoints").latest().endswith("ckpt-00000004.npz")
    resumed = _run_worker("train", {**common, "output_dir": str(tmp_path / "b"),
                                    "weights_out": str(tmp_path / "b.npz")})
    assert resumed["replicas"] == 2 and resumed["step"] == 12
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)


def test_teacher_assistant_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"the assistant's heads .*\(3\) does not divide its "
                                         r"hidden size \(20\)"):
        distill_with_assistant(tiny_teacher, make_dataset, tmp_path, 1, 24, 3,
                               options=options(), assistant_hidden=20)
    with pytest.raises(ValueError, match="num_relation_heads=4 does not divide the assistant"):
        distill_with_assistant(tiny_teacher, make_dataset, tmp_path, 1, 16, 2,
                               options=options(), assistant_hidden=18)
    with pytest.raises(ValueError, match="assistant_steps must be a positive integer"):
        distill_with_assistant(tiny_teacher, make_dataset, tmp_path, 1, 16, 2,
                               options=options(), assistant_steps=0)


# ------------------------------------------------------------------ stages and extension
def staged(**overrides) -> TrainOptions:
    return options(steps=12, checkpoint_every=3, log_every=3, loss=None,
                   stages=("minilmv2:6", "embedding_mse + hidden_mse"), **overrides)


@pytest.mark.slow
def test_two_stage_run_killed_at_the_boundary_resumes_bit_identically(tmp_path):
    straight = run_distillation(build_tiny(), make_dataset, tmp_path / "a", staged(), verbose=0)
    records = read_jsonl(str(tmp_path / "a" / "metrics.jsonl"))
    assert [sorted(k for k in r if k.startswith("loss")) for r in records] == \
        [["loss", "loss_kk", "loss_qq", "loss_vv"]] * 2 + \
        [["loss", "loss_embedding_mse", "loss_hidden_mse"]] * 2
    # the second stage trains the layers the first one could not reach
    untouched = build_tiny()()[1]
    last_ffn = [v.path for v in untouched.blocks[-1].weights if "intermediate" in v.path]
    assert last_ffn
    changed = {v.path for v, w in zip(straight.student.weights, untouched.weights, strict=True)
               if not np.array_equal(v.numpy(), w.numpy())}
    assert set(last_ffn) <= changed

    class Crash(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 7:  # first step of stage 2 done
                raise KeyboardInterrupt("killed at the stage boundary")

    with pytest.raises(KeyboardInterrupt):
        run_distillation(build_tiny(), make_dataset, tmp_path / "b", staged(),
                         callbacks=[Crash()], verbose=0)
    assert [s for s, _ in CheckpointManager(tmp_path / "b" / "checkpoints").checkpoints()][-1] == 6
    starts = []

    def dataset_from(start):
        starts.append(start)
        return make_dataset(start)

    resumed = run_distillation(build_tiny(), dataset_from, tmp_path / "b", staged(), verbose=0)
    assert starts == [6] and resumed.step == 12
    for a, b in zip(straight.distiller.state_variables, resumed.distiller.state_variables,
                    strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(straight.distiller.optimizer.variables,
                    resumed.distiller.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()))
    with pytest.raises(TrainingCheckpointError, match="stages="):
        run_distillation(build_tiny(), make_dataset, tmp_path / "b",
                         options(steps=12, checkpoint_every=3, log_every=3, loss=None,
                                 stages=("minilmv2:3", "embedding_mse")), verbose=0)


def test_resume_with_more_steps_extends_the_run_and_replans_the_decay(tmp_path):
    first = run_distillation(build_tiny(), make_dataset, tmp_path, options(steps=10,
                             checkpoint_every=5, log_every=5), verbose=0)
    assert first.step == 10
    longer = run_distillation(build_tiny(), make_dataset, tmp_path, options(
        steps=20, checkpoint_every=5, log_every=5), verbose=0)
    assert longer.step == 20
    saved = json.loads((tmp_path / "train_options.json").read_text())
    assert saved["fingerprint"]["warmup_steps"] == 1  # the 10-step run's warm-up, kept
    assert saved["extensions"] == [{"at_step": 10, "to_steps": 20}]
    records = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert {"step": 10, "event": "extended", "from_steps": 10, "to_steps": 20} in records
    schedule = WarmupLinearDecay(3e-3, 1, 10, replans=[(10, 20)])
    for record in records:
        if "learning_rate" in record:
            assert record["learning_rate"] == pytest.approx(float(schedule(record["step"] - 1)))
    after = [r["learning_rate"] for r in records if r.get("step", 0) > 10 and "loss" in r]
    assert after and after[0] > 0  # the decay was re-planned, not left at 0
    # other changes are still refused, and a run is never shortened
    with pytest.raises(TrainingCheckpointError, match="learning_rate=0.003 in the checkpoint"):
        run_distillation(build_tiny(), make_dataset, tmp_path, options(
            steps=30, checkpoint_every=5, log_every=5, learning_rate=1e-3), verbose=0)
    with pytest.raises(TrainingCheckpointError, match="steps=20 in the checkpoint, 15 now"):
        run_distillation(build_tiny(), make_dataset, tmp_path, options(
            steps=15, checkpoint_every=5, log_every=5), verbose=0)


def test_alignment_raises_fidelity_and_a_zero_weight_term_does_not(tmp_path):
    """A tiny student's embeddings approach the teacher's under alignment only."""
    from _multiworker_worker import batch_for_step

    from tf_minilm.evaluate import fidelity
    from tf_minilm.model.pooling import PoolingSpec, sentence_embedding

    probe = {k: v.numpy() for k, v in batch_for_step(999, seed=7, batch=64).items()}

    def embeddings(encoder):
        hidden = encoder(probe, training=False)["last_hidden_state"]
        return np.asarray(sentence_embedding(hidden, probe["attention_mask"], PoolingSpec()))

    def build_same_width():
        teacher = tiny_teacher(0, dropout=0.0)
        return teacher, tiny_student(teacher, 1, layers=1, hidden=32, heads=4)

    teacher, before = build_same_width()
    start = fidelity.pairwise_spearman(embeddings(teacher), embeddings(before))
    aligned = run_distillation(build_same_width, make_dataset, tmp_path / "aligned",
                               options(steps=60, loss="embedding_mse + hidden_mse"),
                               verbose=0)
    zero = run_distillation(build_same_width, make_dataset, tmp_path / "zero",
                            options(steps=60,
                                    loss="minilmv2 + 0*embedding_mse + 0*hidden_mse"),
                            verbose=0)
    plain = run_distillation(build_same_width, make_dataset, tmp_path / "plain",
                             options(steps=60, loss="minilmv2"), verbose=0)
    gained = fidelity.pairwise_spearman(embeddings(teacher), embeddings(aligned.student))
    flat = fidelity.pairwise_spearman(embeddings(teacher), embeddings(zero.student))
    assert gained > start + 0.2, (start, gained)
    assert gained > flat + 0.1, (flat, gained)
    # zero-weight alignment terms add nothing: the same student as the relation loss alone
    for a, b in zip(zero.student.weights, plain.student.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
