"""Objective specs: which loss terms a distillation step sums, with what weights, in which stage.

Owns: the names of the loss terms, the grammar of a loss spec and of a stage list, and
the rules the relation terms put on the models (relation names, relation heads that
divide both widths, MiniLM v1's equal head counts). Every caller (`losses`, the
`Distiller`, `DistillConfig`, the CLI) checks through the functions here and re-raises
naming its own flag. Imports: `tf_minilm.constants` and `tf_minilm.rules` only; neither TensorFlow nor
Keras, so configuration code can check a spec before anything heavy loads.

Terms (see `tf_minilm.distill.losses` and `tf_minilm.distill.alignment` for the math):

    minilmv2          MiniLMv2 Q-Q/K-K/V-V relations (relation heads A_r)
    minilm            MiniLM v1 attention distributions + value relation
    embedding_mse     MSE between the teacher's and the student's sentence embeddings
                      (the teacher's pooling and normalisation on both sides)
    embedding_cosine  1 - cosine between the same embeddings
    hidden_mse        MSE between last hidden states, over real tokens

The relation terms reach only the student's Q/K/V of its distilled layer; the
alignment terms reach every student weight on the path to its last hidden state.

A spec is terms joined by "+", each optionally weighted as `WEIGHT*NAME`:
`"embedding_mse"`, `"embedding_mse + 0.5*hidden_mse"`, `"minilmv2+0.001*embedding_mse"`.
A stage is `SPEC:STEPS` (STEPS the stage's length); the last stage may leave out
`:STEPS` and then runs up to the run's total steps.

Example:
>>> parse_objective("embedding_mse + 0.5*hidden_mse")
(('embedding_mse', 1.0), ('hidden_mse', 0.5))
>>> [(s.objective, s.end_step) for s in parse_stages(["minilmv2:100", "embedding_mse"], 300)]
[((('minilmv2', 1.0),), 100), ((('embedding_mse', 1.0),), 300)]
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence

from tf_minilm import rules
from tf_minilm.constants import ALIGNMENT_TERMS, METHODS, QKV_LETTERS

RELATION_TERMS = METHODS
TERMS = RELATION_TERMS + ALIGNMENT_TERMS

Objective = tuple[tuple[str, float], ...]
"""A parsed spec: (term name, weight) pairs in the order given, names unique."""


class ObjectiveError(ValueError):
    """A loss spec or stage list that cannot be used; the message says which part."""


# ------------------------------------------------------------------- relation rules
def check_relations(relations: Sequence[str]) -> tuple[str, ...]:
    """Check MiniLMv2 relation names ("qq", "kk", "vv", "qk", ...).

    Args:
        relations: a sequence of two-letter names over q, k, v; no repeats.

    Returns:
        The names as a tuple, in the order given.

    Raises:
        ObjectiveError: a single string, an empty list, a bad name or a repeat.
    """
    if isinstance(relations, str) or not isinstance(relations, Sequence):
        raise ObjectiveError(
            "relations must be a list of names such as ('qq', 'kk', 'vv'), got the single "
            f"{'string' if isinstance(relations, str) else 'value'} {relations!r}")
    names = tuple(relations)
    if not names:
        raise ObjectiveError("relations is empty; give at least one name such as 'qq'")
    for name in names:
        if not (isinstance(name, str) and len(name) == 2 and set(name) <= set(QKV_LETTERS)):
            raise ObjectiveError(
                f"bad relation name {name!r}: a relation is two letters from q, k, v (for "
                "example 'qq', 'kk', 'vv', 'qk')")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ObjectiveError(f"relation {repeated[0]!r} is given more than once in {names!r}; name each relation once, not twice")
    return names


def check_head_count(count: int, name: str) -> int:
    """`count` as a positive integer, or `ObjectiveError` naming `name`."""
    if isinstance(count, numbers.Integral) and not isinstance(count, bool):
        count = int(count)  # NumPy integers too
    return rules.positive_int(count, name, error=ObjectiveError)


def check_relation_heads(num_relation_heads: int, hidden_sizes: Mapping[str, int],
                         name: str = "num_relation_heads") -> int:
    """MiniLMv2 splits every model's Q/K/V into the same A_r relation heads.

    Args:
        num_relation_heads: A_r.
        hidden_sizes: {"teacher": 384, "student": 384, ...}, the widths to split.
        name: what the caller calls A_r in its message (a flag, a field).

    Returns:
        A_r.

    Raises:
        ObjectiveError: A_r is not a positive integer or does not divide a width.
    """
    check_head_count(num_relation_heads, name)
    for who, hidden in hidden_sizes.items():
        if hidden is not None and hidden % num_relation_heads:
            widths = ", ".join(f"{k} {v}" for k, v in hidden_sizes.items())
            raise ObjectiveError(
                f"{name}={num_relation_heads} does not divide the {who} hidden size {hidden}"
                + (f" (hidden sizes: {widths})" if len(hidden_sizes) > 1 else "")
                + "; the relation heads split Q/K/V of every model alike")
    return num_relation_heads


def check_minilm_v1_heads(teacher_heads: int, student_heads: int) -> None:
    """MiniLM v1 compares attention head by head: equal head counts (widths may differ).

    Raises:
        ObjectiveError: a count that is not positive, or the two counts differ.
    """
    for side, heads in (("teacher", teacher_heads), ("student", student_heads)):
        check_head_count(heads, f"MiniLM v1: {side} attention-head count")
    if teacher_heads != student_heads:
        raise ObjectiveError(
            "MiniLM v1 needs equal attention-head counts on teacher and student, got "
            f"teacher {teacher_heads} heads and student {student_heads} heads "
            "(use MiniLMv2 relation heads to distil across head counts)")


def parse_objective(spec: str | Sequence[tuple[str, float]]) -> Objective:
    """Parse and check a loss spec.

    Args:
        spec: a string such as `"embedding_mse + 0.1*minilmv2"`, or (name, weight) pairs.

    Returns:
        The `Objective`: (name, float weight) pairs, in the order given.

    Raises:
        ObjectiveError: an unknown term, a repeated term, a weight that is not a finite
            number >= 0, an empty spec, or only zero weights.
    """
    if isinstance(spec, str):
        pairs = []
        parts = [part.strip() for part in spec.split("+")]
        if not spec.strip():
            raise ObjectiveError("the loss spec is empty; give terms such as 'embedding_mse'")
        for part in parts:
            if not part:
                raise ObjectiveError(f"loss spec {spec!r} has an empty term (a stray '+')")
            weight_text, star, name = part.rpartition("*")
            name = name.strip()
            if star:
                try:
                    weight = float(weight_text)
                except ValueError:
                    raise ObjectiveError(
                        f"loss spec {spec!r}: weight {weight_text.strip()!r} of {name!r} is not "
                        "a number (write WEIGHT*NAME, e.g. 0.5*hidden_mse)") from None
            else:
                weight = 1.0
            pairs.append((name, weight))
    else:
        try:
            pairs = [(name, weight) for name, weight in spec]
        except (TypeError, ValueError):
            raise ObjectiveError(
                f"a loss spec is a string or (name, weight) pairs, got {spec!r}") from None
    if not pairs:
        raise ObjectiveError("the loss spec is empty; give terms such as 'embedding_mse'")
    seen: set[str] = set()
    objective = []
    for name, weight in pairs:
        if name not in TERMS:
            raise ObjectiveError(f"unknown loss term {name!r}; choose from {', '.join(TERMS)}")
        if name in seen:
            raise ObjectiveError(f"loss term {name!r} is given twice")
        seen.add(name)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not math.isfinite(weight) or weight < 0:
            raise ObjectiveError(
                f"weight of loss term {name!r} must be a finite number >= 0, got {weight!r}")
        objective.append((name, float(weight)))
    if "minilm" in seen and "minilmv2" in seen:
        raise ObjectiveError("choose one of minilm and minilmv2 (they distil the same Q/K/V)")
    if not any(weight > 0 for _, weight in objective):
        raise ObjectiveError(f"every weight of loss spec {format_objective(objective)!r} is 0")
    return tuple(objective)


def format_objective(objective: Objective) -> str:
    """The spec string of an objective (`parse_objective` reads it back unchanged)."""
    return " + ".join(name if weight == 1.0 else f"{weight:g}*{name}"
                      for name, weight in objective)


def relation_term(objective: Objective) -> str | None:
    """'minilmv2', 'minilm' or None: the relation term of an objective."""
    return next((name for name, _ in objective if name in RELATION_TERMS), None)


def relation_method(objectives: Sequence[Objective]) -> str | None:
    """The one relation method (`minilmv2` or `minilm`) a run's objectives use, or None.

    Raises:
        ObjectiveError: the objectives (stages) mix the two: the `Distiller` captures one
            kind of relation for the whole run.
    """
    named = [(index, relation_term(objective)) for index, objective in enumerate(objectives)]
    methods = {name for _, name in named if name}
    if len(methods) > 1:
        uses = ", ".join(f"stage {index + 1} {name}" for index, name in named if name)
        raise ObjectiveError(f"the stages mix relation methods ({uses}); one run distils one "
                             "kind of relation: use minilmv2 or minilm in every stage")
    return methods.pop() if methods else None


def needs_alignment(objective: Objective) -> bool:
    """True when a term compares outputs of the whole student (every weight is trained)."""
    return any(name in ALIGNMENT_TERMS for name, _ in objective)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a run: the objective used for global steps before `end_step`.

    Args:
        objective: the stage's terms and weights.
        end_step: the global step at which the stage ends (exclusive).
    """

    objective: Objective
    end_step: int

    def to_dict(self) -> dict[str, object]:
        return {"loss": format_objective(self.objective), "end_step": self.end_step}


def parse_stages(specs: Sequence[str], total_steps: int) -> tuple[Stage, ...]:
    """Parse stage specs `SPEC:STEPS` (the last may be just `SPEC`) into `Stage`s.

    Args:
        specs: one string per stage, in order.
        total_steps: the run's total steps; the stages must fill exactly this many.

    Returns:
        The stages, with cumulative end steps; the last ends at `total_steps`.

    Raises:
        ObjectiveError: a bad spec, a stage length that is not a positive integer,
            lengths that do not add up to `total_steps`, or stages that mix relation
            methods (`relation_method`).
    """
    if isinstance(specs, str) or not specs:
        raise ObjectiveError("give one or more stages, each SPEC:STEPS (the last may be SPEC)")
    stages = []
    start = 0
    for index, text in enumerate(specs):
        last = index == len(specs) - 1
        spec, colon, steps_text = str(text).rpartition(":")
        if not colon:
            spec, steps_text = steps_text, ""
        if steps_text.strip():
            try:
                steps = int(steps_text)
            except ValueError:
                raise ObjectiveError(
                    f"stage {index + 1} ({text!r}): {steps_text!r} is not a whole number of "
                    "steps (write SPEC:STEPS)") from None
            if steps < 1:
                raise ObjectiveError(f"stage {index + 1} ({text!r}) must last at least 1 step")
            end = start + steps
        elif last:
            end = total_steps
        else:
            raise ObjectiveError(
                f"stage {index + 1} ({text!r}) needs its length (SPEC:STEPS); only the last "
                "stage may run to the end")
        try:
            objective = parse_objective(spec)
        except ObjectiveError as err:
            raise ObjectiveError(f"stage {index + 1} ({text!r}): {err}") from None
        if end <= start:
            raise ObjectiveError(
                f"stage {index + 1} ({text!r}) starts at step {start}, at or after the run's "
                f"end ({total_steps} steps)")
        stages.append(Stage(objective, end))
        start = end
    if start != total_steps:
        raise ObjectiveError(
            f"the stages last {start} steps in all, but the run has {total_steps} steps; make "
            "them add up, or leave the last stage's length out")
    relation_method([stage.objective for stage in stages])
    return tuple(stages)


def extend_stages(stages: Sequence[Stage], total_steps: int) -> tuple[Stage, ...]:
    """The same stages with the last one running to `total_steps` (a longer run)."""
    stages = tuple(stages)
    if total_steps < stages[-1].end_step:
        raise ObjectiveError(
            f"cannot shorten a run from {stages[-1].end_step} to {total_steps} steps")
    return stages[:-1] + (Stage(stages[-1].objective, total_steps),)


def stage_at(stages: Sequence[Stage], step: int) -> int:
    """Index of the stage that global step `step` (0-based) belongs to."""
    for index, stage in enumerate(stages):
        if step < stage.end_step:
            return index
    return len(stages) - 1
