"""`TrainSpec`: a training run's settings after resolution, frozen, and the run's fingerprint.

Owns: the resolved tree the trainer, the `Distiller` and the teacher assistant consume
without checking again (objective with its parsed stages and pooling as objects,
optimizer, checkpoints, runtime); the fingerprint of the settings that change the
weights, written to `config.json` and to every checkpoint; `continue_run`, the rule of
a longer resumed run; and `fingerprint_differences`, the one comparison that decides
whether a resume continues the same run. Imports: `distill.objectives`, `model.pooling`;
TF-free.

A spec is made by `TrainOptions.resolve` (`distill.options`), which calls each rule's
owner once; nothing here validates. Field names are the `tf-minilm distill` flags'
(`relation_heads` is `--relation-heads`), so a value keeps its name from the command
line to the step.

Example:
>>> from tf_minilm.distill.options import TrainOptions
>>> spec = TrainOptions(steps=100, loss="minilmv2", relation_heads=12).resolve()
>>> spec.objective.method, spec.optimizer.learning_rate, spec.warmup_steps
('minilmv2', 0.0003, 10)
>>> sorted(spec.fingerprint())[:3]
['adam_beta_1', 'adam_beta_2', 'adam_epsilon']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tf_minilm.distill import objectives
from tf_minilm.model.pooling import PoolingSpec


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
    """What a step minimises.

    Args:
        stages: the run's stages, parsed (`objectives.Stage`), the last ending at the
            run's steps.
        method: the relation method of the run (`minilmv2` or `minilm`); `minilmv2` when
            no stage has a relation term.
        teacher_layer, student_layer: 1-based layers whose Q/K/V are distilled; None is
            the last.
        relation_heads: MiniLMv2's relation heads A_r.
        relations: the MiniLMv2 relations summed.
        relation_chunk_mb: MiB of one chunk of relation scores; None: the device's
            default (`runtime.resolve_relation_chunk_bytes`). Memory and speed only.
        pooling: the teacher's sentence-embedding pooling, used by the embedding terms.
    """

    stages: tuple[objectives.Stage, ...]
    method: str
    teacher_layer: int | None
    student_layer: int | None
    relation_heads: int
    relations: tuple[str, ...]
    relation_chunk_mb: int | None
    pooling: PoolingSpec

    @property
    def loss(self) -> str | None:
        """The loss spec of a one-stage run (None with several stages)."""
        if len(self.stages) > 1:
            return None
        return objectives.format_objective(self.stages[0].objective)

    @property
    def uses_relations(self) -> bool:
        return any(objectives.relation_term(stage.objective) for stage in self.stages)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """AdamW with a linear warm-up and decay.

    Args:
        learning_rate: the peak rate.
        warmup_steps: linear warm-up steps.
        warmup_explicit: the warm-up was given (not the 10% default); a longer resumed run
            keeps the run's warm-up only when it was not.
        weight_decay: decoupled weight decay (not on LayerNorms and biases).
        clipnorm: global-norm clip of the all-reduced gradient; None is off.
        adam_beta_1, adam_beta_2, adam_epsilon: AdamW's moments and epsilon.
    """

    learning_rate: float
    warmup_steps: int
    weight_decay: float
    clipnorm: float | None
    adam_beta_1: float
    adam_beta_2: float
    adam_epsilon: float
    warmup_explicit: bool = False


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    """When a run writes checkpoints, logs and evaluations, and whether it resumes.

    Args:
        checkpoint_every: steps between checkpoints.
        keep_checkpoints: newest checkpoints kept.
        log_every: steps between metrics.jsonl / TensorBoard records.
        eval_every: steps between evaluations; None is only at the end.
        eval_steps: batches per evaluation; None is the whole eval dataset.
        resume: continue from the newest checkpoint (else existing checkpoints are an
            error).
    """

    checkpoint_every: int
    keep_checkpoints: int
    log_every: int
    eval_every: int | None
    eval_steps: int | None
    resume: bool


@dataclasses.dataclass(frozen=True)
class RuntimeSpec:
    """Where and how a run computes (names; `distill.runtime` turns them into objects).

    Args:
        strategy: a `constants.STRATEGIES` name.
        precision: a `constants.PRECISIONS` name.
        jit_compile: XLA for the train step; None is `runtime.resolve_jit_compile`'s choice.
        seed: seed of initialisation, dropout and data order.
    """

    strategy: str
    precision: str
    jit_compile: bool | None
    seed: int


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """One training run, resolved: what the trainer, the `Distiller` and the assistant take.

    Args:
        steps: optimizer steps in all.
        objective, optimizer, checkpoints, runtime: the parts.
        identity: settings of the job around the training (teacher, data, student sizes,
            initialisation) that also change the weights; part of the fingerprint, so a
            checkpoint knows the whole run it belongs to. Empty for a Python run.
    """

    steps: int
    objective: ObjectiveSpec
    optimizer: OptimizerSpec
    checkpoints: CheckpointSpec
    runtime: RuntimeSpec
    identity: tuple[tuple[str, Any], ...] = ()

    @property
    def warmup_steps(self) -> int:
        return self.optimizer.warmup_steps

    def replace(self, **parts: Any) -> TrainSpec:
        """A copy with parts or part fields replaced: `objective=`, or `teacher_layer=` ..."""
        own = {f.name for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for name, value in parts.items():
            if name in own:
                changes[name] = value
                continue
            part = next((p for p in ("objective", "optimizer", "checkpoints", "runtime")
                         if name in {f.name for f in dataclasses.fields(getattr(self, p))}),
                        None)
            if part is None:
                raise TypeError(f"TrainSpec has no field {name!r}")
            current = changes.get(part, getattr(self, part))
            changes[part] = dataclasses.replace(current, **{name: value})
        return dataclasses.replace(self, **changes)

    def with_steps(self, steps: int, warmup_steps: int | None = None) -> TrainSpec:
        """The same run lasting `steps`: the last stage ends there; the warm-up is kept
        unless given.

        Raises:
            ValueError: `steps` ends the run before its last stage starts.
        """
        stages = self.objective.stages
        last_start = stages[-2].end_step if len(stages) > 1 else 0
        if steps <= last_start:
            raise ValueError(f"a run of {steps} steps ends before its last stage starts "
                             f"(step {last_start})")
        stages = stages[:-1] + (objectives.Stage(stages[-1].objective, steps),)
        return self.replace(steps=steps, stages=stages,
                            warmup_steps=self.warmup_steps if warmup_steps is None
                            else warmup_steps)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change the weights, as JSON values (log and checkpoint cadence,
        chunk sizes and resume are left out: they change neither the loss nor the data)."""
        objective, optimizer = self.objective, self.optimizer
        return {
            **dict(self.identity),
            "steps": self.steps,
            "learning_rate": optimizer.learning_rate,
            "warmup_steps": optimizer.warmup_steps,
            "weight_decay": optimizer.weight_decay,
            "clipnorm": optimizer.clipnorm,
            "adam_beta_1": optimizer.adam_beta_1,
            "adam_beta_2": optimizer.adam_beta_2,
            "adam_epsilon": optimizer.adam_epsilon,
            "method": objective.method,
            "stages": [stage.to_dict() for stage in objective.stages],
            "teacher_layer": objective.teacher_layer,
            "student_layer": objective.student_layer,
            "relation_heads": objective.relation_heads,
            "relations": list(objective.relations),
            "pooling": objective.pooling.to_dict(),
            "precision": self.runtime.precision,
            "seed": self.runtime.seed,
        }


# Keys of a fingerprint that a longer resumed run may change.
_EXTENSION_KEYS = ("steps", "replans")


def continue_run(spec: TrainSpec, saved: Mapping[str, Any]) -> tuple[TrainSpec, int | None]:
    """The spec a resume continues with, and the step count it extends from (or None).

    The warm-up of the run is kept unless the command gave one (after an extension the
    10% default of the new total is not the run's). A resume asking for more steps than
    the saved run extends it: the last stage runs to the new total.

    Args:
        spec: the spec of the resuming command.
        saved: the fingerprint of the run (config.json's or a checkpoint's).
    """
    saved_warmup = saved.get("warmup_steps")
    if not spec.optimizer.warmup_explicit and isinstance(saved_warmup, int) \
            and saved_warmup < spec.steps:
        spec = spec.replace(warmup_steps=saved_warmup)
    saved_steps = saved.get("steps")
    if not isinstance(saved_steps, int) or spec.steps <= saved_steps:
        return spec, None
    return spec, saved_steps


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                            extended_from: int | None = None) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every setting that differs: a resume must
    find none. A longer run (`extended_from`) may change the total steps, the last stage's
    end and the re-plans."""
    expected = dict(saved)
    if extended_from is not None:
        for key in _EXTENSION_KEYS:
            if key in current:
                expected[key] = current[key]
        stages = [dict(stage) for stage in saved.get("stages") or []]
        if stages:
            stages[-1]["end_step"] = current["steps"]
            expected["stages"] = stages
    keys = list(current) + [key for key in expected if key not in current]
    return [(key, expected.get(key), current.get(key)) for key in keys
            if expected.get(key) != current.get(key)]
