"""`Distiller`: a frozen teacher, a trainable student and a weighted objective, as a Keras model.

Owns: the distillation step (forward of both models, the objective's terms, float32
losses, gradient clipping across replicas) and the training-only projection. Imports:
`distill.losses`, `distill.alignment`, `distill.objectives`, `distill.options`,
`distill.spec`, `model`, `constants`.

The objective (`tf_minilm.distill.objectives`) sums weighted terms: the MiniLM / MiniLMv2
self-attention relations of `tf_minilm.distill.losses` and the output alignments of
`tf_minilm.distill.alignment` (sentence embedding, last hidden states), all in float32. With
relation terms only, one training step runs the teacher without dropout up to the
Q/K/V projections of its chosen layer and the student (with dropout) up to the Q/K/V
of its chosen layer, and updates only the student variables that feed that loss (the
papers' setting). With an alignment term both models run to their last hidden state
and every student weight on that path is trained; when the widths differ, a linear
projection owned by the distiller (never part of the student) maps the student's
states to the teacher's width. A run of several stages switches the objective with
`set_stage`; the optimizer is built once on the variables of every stage.

Stored teacher targets: a batch may carry the teacher's outputs for its rows
(`teacher_embedding` [B, H], `teacher_hidden` [B, S, H], from `prepare --targets`,
`data.targets`). When they serve every term of the active stage
(`stored_targets_serve`), the step runs the student alone: the teacher's forward, most
of a step with a base-size teacher, is skipped.

Distribution and precision: the per-replica loss is divided by the number of
replicas in sync (the optimizer sums replica gradients); under `mixed_float16` the
loss goes through `optimizer.scale_loss` (Keras wraps the optimizer in a
`LossScaleOptimizer`). Gradient clipping by global norm is done here, on the
all-reduced gradient (`clipnorm`), because Keras 3.15 optimizers clip each
replica's local gradient before the all-reduce, which changes the result as soon
as more than one replica trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tf_minilm.constants import INPUT_NAMES, METHODS, QKV_LETTERS
from tf_minilm.distill import alignment
from tf_minilm.distill import losses as losses_lib
from tf_minilm.distill import objectives as objectives_lib
from tf_minilm.distill.options import resolve_clipnorm
from tf_minilm.distill.spec import ObjectiveSpec
from tf_minilm.model.config import check_layer_number
from tf_minilm.model.encoder import Encoder
from tf_minilm.model.pooling import PoolingSpec, sentence_embedding


def _resolve_layer(layer: int | None, encoder: Encoder, side: str) -> int:
    depth = encoder.config.num_hidden_layers
    if layer is None:
        return depth
    return check_layer_number(layer, depth, side, f"{side}_layer=")


def _dense_gradient(gradient: Any) -> Any:
    """IndexedSlices (embedding lookups) -> dense tensor, so norms count duplicates right."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def _multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True under a MultiWorkerMirroredStrategy that spans a cluster (TF_CONFIG)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    resolver = strategy.cluster_resolver
    return resolver is not None and bool(resolver.cluster_spec().as_dict())


@keras.saving.register_keras_serializable(package="tf_minilm")
class Distiller(keras.Model):
    """Distillation of a frozen teacher into a student encoder under a weighted objective.

    `fit` / `evaluate` take batches that are dicts of int32 [batch, seq] tensors
    `input_ids`, `attention_mask` and optionally `token_type_ids`. The reported
    metrics are "loss" (the weighted sum) plus each term unweighted: "loss_qq",
    "loss_kk", "loss_vv" (the chosen `relations`) for MiniLMv2, "loss_attention" and
    "loss_value_relation" for MiniLM (v1), "loss_embedding_mse",
    "loss_embedding_cosine", "loss_hidden_mse" for the alignment terms.

    Only student variables that feed a term of non-zero weight are trainable
    through the distiller (`trainable_weights`). With relation terms alone that is
    everything up to the chosen student layer's Q/K/V projections (the attention
    output, feed-forward and LayerNorms of that layer, the layers after it and the
    pooler are left as they are); with an alignment term, every student weight but
    the pooler, plus the width projection when the widths differ.

    The teacher is frozen in place (`teacher.trainable = False`).

    Args:
        teacher: the teacher `Encoder`.
        student: the student `Encoder` (same vocabulary as the teacher).
        method: "minilmv2" (relation heads; any head counts and widths) or "minilm"
            (v1: attention distributions + value relation; equal head counts); the
            objective when `objective` is not given.
        teacher_layer: 1-based teacher layer whose Q/K/V are distilled; default the last.
            MiniLMv2 uses an upper-middle layer for large teachers (e.g. 21 of 24).
        student_layer: 1-based student layer; default (and paper setting) the last.
        num_relation_heads: A_r for MiniLMv2 (48 for base teachers, 64 for large);
            must divide both hidden sizes. Ignored by "minilm".
        relations: MiniLMv2 relations to sum, default ("qq", "kk", "vv").
        relation_chunk_bytes: memory budget of one chunk of relation scores
            (`losses.relation_chunk_pairs`); changes memory and speed, not the loss.
        clipnorm: clip the (all-reduced, unscaled) gradient to this global norm;
            None or 0 disables clipping. Do not also set `global_clipnorm` on the
            optimizer when training on more than one replica (Keras clips per
            replica, before the all-reduce).
        objective: a loss spec (`tf_minilm.distill.objectives.parse_objective`), e.g.
            "embedding_mse + 0.5*hidden_mse"; default `method` alone.
        stage_objectives: one loss spec per stage of a staged run, instead of
            `objective`; stage 0 is active until `set_stage` is called.
        pooling: the teacher's sentence-embedding pooling (`PoolingSpec` or its dict),
            applied to both models by the embedding terms; default mean + normalise.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:
    >>> from tf_minilm.model.config import EncoderConfig
    >>> from tf_minilm.model.student import build_student
    >>> teacher = Encoder(EncoderConfig(vocab_size=100, hidden_size=32,
    ...     num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    >>> student = build_student(teacher, num_layers=1, hidden_size=16, num_heads=2)
    >>> distiller = Distiller(teacher, student, num_relation_heads=4)
    >>> distiller.compile(optimizer=keras.optimizers.AdamW(1e-3))
    >>> batch = {"input_ids": keras.ops.ones((2, 8), "int32"),
    ...          "attention_mask": keras.ops.ones((2, 8), "int32")}
    >>> sorted(distiller(batch))
    ['loss', 'loss_kk', 'loss_qq', 'loss_vv']
    >>> aligned = Distiller(teacher, student, objective="embedding_mse + 0.1*minilmv2",
    ...                     num_relation_heads=4)
    >>> sorted(aligned(batch))
    ['loss', 'loss_embedding_mse', 'loss_kk', 'loss_qq', 'loss_vv']
    """

    def __init__(
        self,
        teacher: Encoder,
        student: Encoder,
        method: str = "minilmv2",
        teacher_layer: int | None = None,
        student_layer: int | None = None,
        num_relation_heads: int = 48,
        relations: Sequence[str] = losses_lib.DEFAULT_RELATIONS,
        relation_chunk_bytes: int = losses_lib.CHUNK_BYTES,
        clipnorm: float | None = None,
        objective: str | Sequence[tuple[str, float]] | None = None,
        stage_objectives: Sequence[str | Sequence[tuple[str, float]]] | None = None,
        pooling: PoolingSpec | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for side, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, Encoder):
                raise TypeError(
                    f"{side} must be a tf_minilm Encoder, got {type(model).__name__}"
                )
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if teacher.config.vocab_size != student.config.vocab_size:
            raise ValueError(
                f"teacher vocab_size ({teacher.config.vocab_size}) and student vocab_size "
                f"({student.config.vocab_size}) differ; the student must use the teacher's "
                "tokenizer"
            )
        if objective is not None and stage_objectives is not None:
            raise ValueError("give objective or stage_objectives, not both")
        if stage_objectives is None:
            stage_objectives = [objective if objective is not None else method]
        if isinstance(stage_objectives, str) or not stage_objectives:
            raise ValueError("stage_objectives must be a non-empty list of loss specs")
        self.stage_objectives = tuple(
            objectives_lib.parse_objective(spec) for spec in stage_objectives
        )
        self.method = objectives_lib.relation_method(self.stage_objectives) or method
        if isinstance(pooling, dict):
            pooling = PoolingSpec(**pooling)
        self.pooling = pooling or PoolingSpec()
        self.teacher_layer = _resolve_layer(teacher_layer, teacher, "teacher")
        self.student_layer = _resolve_layer(student_layer, student, "student")
        self.relations = objectives_lib.check_relations(relations)
        self.num_relation_heads = num_relation_heads
        self.relation_chunk_bytes = losses_lib.check_chunk_bytes(relation_chunk_bytes,
                                                                 "relation_chunk_bytes")
        self.clipnorm = resolve_clipnorm(clipnorm)

        uses_relations = any(objectives_lib.relation_term(o) for o in self.stage_objectives)
        if uses_relations and self.method == "minilmv2":
            objectives_lib.check_relation_heads(
                num_relation_heads, {"teacher": teacher.config.hidden_size,
                                     "student": student.config.hidden_size})
            self._relation_names = tuple(f"loss_{name}" for name in self.relations)
            needed = set("".join(self.relations))
        elif uses_relations:
            objectives_lib.check_minilm_v1_heads(
                teacher.config.num_attention_heads, student.config.num_attention_heads
            )
            self._relation_names = tuple(f"loss_{name}" for name in losses_lib.V1_TERMS)
            needed = set("".join(losses_lib.V1_TERMS.values()))
        else:
            self._relation_names = ()
            needed = set()
        self._needed_projections = tuple(c for c in QKV_LETTERS if c in needed)

        teacher.trainable = False
        self.teacher = teacher
        self.student = student
        widths_differ = teacher.config.hidden_size != student.config.hidden_size
        if widths_differ and any(objectives_lib.needs_alignment(o)
                                 for o in self.stage_objectives):
            # Training-only: maps student states to the teacher's width for the alignment
            # terms; it belongs to the distiller, so no saved student carries it.
            self.projection: keras.layers.Dense | None = keras.layers.Dense(
                teacher.config.hidden_size, dtype="float32", name="projection")
            self.projection.build((None, None, student.config.hidden_size))
        else:
            self.projection = None
        names = ("loss",) + self._relation_names + tuple(
            f"loss_{name}" for name in objectives_lib.ALIGNMENT_TERMS)
        self._all_trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.set_stage(0)
        self.built = True

    @classmethod
    def from_spec(cls, teacher: Encoder, student: Encoder, objective: ObjectiveSpec, *,
                  clipnorm: float | None = None,
                  relation_chunk_bytes: int = losses_lib.CHUNK_BYTES,
                  **kwargs: Any) -> Distiller:
        """The `Distiller` of a resolved objective (`distill.spec.ObjectiveSpec`): its parsed
        stages, layers, relation heads and pooling object, passed as they are.

        Example:
        >>> from tf_minilm.distill.options import TrainOptions
        >>> spec = TrainOptions(loss="minilmv2", relation_heads=4).resolve()
        >>> sorted(Distiller.from_spec(teacher, student, spec.objective)(batch))
        ['loss', 'loss_kk', 'loss_qq', 'loss_vv']
        """
        return cls(teacher, student, method=objective.method,
                   teacher_layer=objective.teacher_layer, student_layer=objective.student_layer,
                   num_relation_heads=objective.relation_heads, relations=objective.relations,
                   relation_chunk_bytes=relation_chunk_bytes, clipnorm=clipnorm,
                   stage_objectives=[stage.objective for stage in objective.stages],
                   pooling=objective.pooling, **kwargs)

    # ---------------------------------------------------------------- stages
    @property
    def objective(self) -> objectives_lib.Objective:
        """The active stage's (term, weight) pairs."""
        return self.stage_objectives[self.stage]

    def set_stage(self, index: int) -> None:
        """Make stage `index` active (its objective and trainable variables).

        The next `fit` traces a new train step; the optimizer keeps its state.
        """
        if not 0 <= index < len(self.stage_objectives):
            raise ValueError(f"stage {index} does not exist (the run has "
                             f"{len(self.stage_objectives)} stage(s))")
        self.stage = index
        objective = self.objective
        term_names = []
        for name, _ in objective:
            if name in objectives_lib.RELATION_TERMS:
                term_names += list(self._relation_names)
            else:
                term_names.append(f"loss_{name}")
        self.term_names = tuple(term_names)
        self._trackers = [self._all_trackers[name] for name in ("loss",) + self.term_names]
        self._connected_ids = {id(v) for v in self._connected_variables(objective)}
        self.train_function = None
        self.test_function = None

    # ------------------------------------------------------------ variables
    def _connected_variables(self, objective: objectives_lib.Objective) -> list[Any]:
        """Student (and projection) variables that a term of non-zero weight reaches."""
        active = {name for name, weight in objective if weight > 0}
        student = self.student
        if active & set(objectives_lib.ALIGNMENT_TERMS):
            layers: list[Any] = [student.embeddings, *student.blocks]
            if self.projection is not None:
                layers.append(self.projection)
        else:
            layers = [student.embeddings]
            layers += student.blocks[: self.student_layer - 1]
            attention = student.blocks[self.student_layer - 1].attention
            layers += [getattr(attention, {"q": "query", "k": "key", "v": "value"}[c])
                       for c in self._needed_projections]
        connected = []
        for layer in layers:
            connected += [v for v in layer.trainable_weights]
        return connected

    def _trainable_pool(self) -> list[Any]:
        variables = list(self.student.trainable_weights)
        if self.projection is not None:
            variables += list(self.projection.trainable_weights)
        return variables

    @property
    def trainable_weights(self) -> list[Any]:
        """The variables that receive a gradient from the active stage's loss."""
        if not self.trainable or not self.student.trainable:
            return []
        return [v for v in self._trainable_pool() if id(v) in self._connected_ids]

    @property
    def all_stage_variables(self) -> list[Any]:
        """Variables trained by any stage (the optimizer is built on these, once)."""
        ids = {id(v) for o in self.stage_objectives for v in self._connected_variables(o)}
        return [v for v in self._trainable_pool() if id(v) in ids]

    @property
    def state_variables(self) -> list[Any]:
        """What a training checkpoint holds besides the optimizer: student + projection."""
        variables = list(self.student.variables)
        if self.projection is not None:
            variables += list(self.projection.variables)
        return variables

    @property
    def non_trainable_weights(self) -> list[Any]:
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.weights if id(v) not in trainable]

    @property
    def trainable_variables(self) -> list[Any]:
        """Same as `trainable_weights` (Keras builds optimizers from this list)."""
        return self.trainable_weights

    @property
    def non_trainable_variables(self) -> list[Any]:
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.variables if id(v) not in trainable]

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self._trackers)

    # ------------------------------------------------------------- forward
    def _run_models(self, inputs: dict[str, Any], training: bool, relations: bool,
                    full: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """Teacher (no dropout, no gradient) and student outputs for the active terms.

        With `relations`, each returns `qkv` of its chosen layer; with `full` each runs to
        its last hidden state, otherwise it stops after that layer's Q/K/V.
        """
        model_inputs = {name: inputs[name] for name in INPUT_NAMES if name in inputs}
        outputs = []
        for model, layer, dropout in ((self.teacher, self.teacher_layer, False),
                                      (self.student, self.student_layer, training)):
            outputs.append(model(model_inputs, training=dropout,
                                 qkv_layers=(layer,) if relations else None,
                                 stop_after_qkv=not full))
        teacher_out, student_out = outputs
        teacher_out = tf.nest.map_structure(tf.stop_gradient, teacher_out)
        return teacher_out, student_out

    def _qkv(self, inputs: dict[str, Any], training: bool) -> tuple[tuple, tuple]:
        """(teacher q, k, v), (student q, k, v) of the distilled layers."""
        teacher_out, student_out = self._run_models(inputs, training, True, False)
        return teacher_out["qkv"][0], student_out["qkv"][0]

    def compute_losses(self, inputs: dict[str, Any], training: bool = False) -> dict[str, Any]:
        """All loss terms of the active stage for one batch, float32 scalars.

        Args:
            inputs: dict with `input_ids`, `attention_mask` (and optionally
                `token_type_ids`), each [batch, seq].
            training: run the student with dropout.

        Returns:
            {"loss": weighted total, "loss_<term>": ...}; each term is a mean over the
            (local) batch, reported unweighted.
        """
        if "input_ids" not in inputs or "attention_mask" not in inputs:
            raise ValueError(
                "a distillation batch is a dict with 'input_ids' and 'attention_mask' "
                f"(and optionally 'token_type_ids'); got keys {sorted(inputs)}"
            )
        objective = self.objective
        relation = objectives_lib.relation_term(objective)
        full = objectives_lib.needs_alignment(objective)
        mask = inputs["attention_mask"]
        stored = self.stored_targets_serve(inputs)
        if stored:  # the teacher's outputs come with the batch: only the student runs
            model_inputs = {name: inputs[name] for name in INPUT_NAMES if name in inputs}
            student_out = self.student(model_inputs, training=training)
            teacher_out = {}
        else:
            teacher_out, student_out = self._run_models(inputs, training, bool(relation), full)
        values: dict[str, Any] = {}
        total = tf.constant(0.0, tf.float32)
        weights = dict(objective)
        if relation:
            teacher_qkv, student_qkv = teacher_out["qkv"][0], student_out["qkv"][0]
            if relation == "minilmv2":
                terms = losses_lib.relation_losses(
                    teacher_qkv, student_qkv, mask, self.num_relation_heads, self.relations,
                    self.relation_chunk_bytes)
            else:
                terms = losses_lib.minilm_v1_losses(
                    teacher_qkv, student_qkv, mask, self.student.config.num_attention_heads,
                    self.relation_chunk_bytes)
            for name, value in terms.items():
                values[f"loss_{name}"] = tf.cast(value, tf.float32)
                total += weights[relation] * values[f"loss_{name}"]
        if full:
            if stored:
                teacher_hidden = tf.cast(inputs["teacher_hidden"], tf.float32) \
                    if "teacher_hidden" in inputs else None
            else:
                teacher_hidden = tf.cast(teacher_out["last_hidden_state"], tf.float32)
            student_hidden = tf.cast(student_out["last_hidden_state"], tf.float32)
            if self.projection is not None:
                student_hidden = self.projection(student_hidden)
            if stored and "teacher_embedding" in inputs:
                teacher_embedding = tf.cast(inputs["teacher_embedding"], tf.float32)
            else:
                teacher_embedding = sentence_embedding(teacher_hidden, mask, self.pooling)
            student_embedding = sentence_embedding(student_hidden, mask, self.pooling)
            for name, _ in objective:
                if name == "embedding_mse":
                    value = alignment.embedding_mse(teacher_embedding, student_embedding)
                elif name == "embedding_cosine":
                    value = alignment.embedding_cosine(teacher_embedding, student_embedding)
                elif name == "hidden_mse":
                    value = alignment.hidden_mse(teacher_hidden, student_hidden, mask)
                else:
                    continue
                values[f"loss_{name}"] = value
                total += weights[name] * value
        return {"loss": total, **values}

    def stored_targets_serve(self, inputs: dict[str, Any]) -> bool:
        """Whether the batch's stored teacher targets (`teacher_embedding` [B, H],
        `teacher_hidden` [B, S, H], `data.targets`) serve every term of the active
        stage, so that the teacher does not run: no relation term (those need the
        teacher's Q/K/V), `hidden_mse` only with stored hidden states, the embedding
        terms with either."""
        objective = self.objective
        has_hidden, has_embedding = "teacher_hidden" in inputs, "teacher_embedding" in inputs
        if objectives_lib.relation_term(objective) or not (has_hidden or has_embedding):
            return False
        return all(has_hidden if name == "hidden_mse" else has_hidden or has_embedding
                   for name, _ in objective)

    def call(self, inputs: dict[str, Any], training: bool | None = False) -> dict[str, Any]:
        return self.compute_losses(inputs, training=bool(training))

    # ------------------------------------------------------------- training
    @staticmethod
    def _unpack(data: Any) -> dict[str, Any]:
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if not isinstance(x, dict):
            raise ValueError(
                "Distiller expects each batch to be a dict of tensors (input_ids, "
                f"attention_mask, token_type_ids), got {type(x).__name__}"
            )
        return x

    def _update_trackers(self, values: dict[str, Any]) -> dict[str, Any]:
        for tracker in self._trackers:
            tracker.update_state(values[tracker.name])
        results = {tracker.name: tracker.result() for tracker in self._trackers}
        if _multi_worker(tf.distribute.get_strategy()):
            # Keras 3.15 reduces step outputs across workers with reduce(MEAN, axis=0),
            # which rejects scalars; a [1] vector reduces to the scalar mean.
            results = {name: tf.reshape(value, [1]) for name, value in results.items()}
        return results

    def _process_gradients(self, gradients: list[Any], replicas: int) -> list[Any]:
        """Densify; clip by the global norm of the summed, unscaled gradient; agree on finiteness.

        Returns the local gradients times one factor shared by all replicas (the
        optimizer then sums them across replicas). The factor is NaN when the global
        gradient is not finite, so that every replica sees a non-finite gradient
        (the loss-scale optimizer then skips the step on all of them consistently).
        """
        # Embedding lookups give IndexedSlices with one row per token, so repeated ids
        # repeat rows; Keras 3.15 Adam squares such rows one by one (sum of squares
        # instead of square of sum) and takes a wrong step. Dense gradients are exact.
        gradients = [_dense_gradient(g) for g in gradients]
        loss_scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        if self.clipnorm is None and (replicas == 1 or not loss_scaled):
            return gradients
        context = tf.distribute.get_replica_context()
        scale = tf.cast(self.optimizer.scale_loss(tf.constant(1.0, tf.float32)), tf.float32)
        if self.clipnorm is not None:
            full = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients) \
                if replicas > 1 else gradients
            norm = tf.linalg.global_norm(full) / scale
            factor = self.clipnorm / tf.maximum(norm, self.clipnorm)
        else:
            local = tf.add_n([tf.reduce_sum(tf.square(g)) for g in gradients])
            norm = context.all_reduce(tf.distribute.ReduceOp.SUM, local)
            factor = tf.constant(1.0, tf.float32)
        factor = tf.where(tf.math.is_finite(norm), factor, float("nan"))
        return [g * tf.cast(factor, g.dtype) for g in gradients]

    def train_step(self, data: Any) -> dict[str, Any]:
        inputs = self._unpack(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.trainable_weights
        with tf.GradientTape() as tape:
            values = self.compute_losses(inputs, training=True)
            loss = values["loss"] / tf.cast(replicas, tf.float32)
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, variables)
        gradients = self._process_gradients(gradients, replicas)
        self.optimizer.apply(gradients, variables)
        return self._update_trackers(values)

    def test_step(self, data: Any) -> dict[str, Any]:
        return self._update_trackers(self.compute_losses(self._unpack(data), training=False))

    def _build_optimizer(self) -> None:
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.all_stage_variables)

    def make_train_function(self, force: bool = False) -> Any:
        # Build the optimizer before tracing: LossScaleOptimizer.scale_loss would
        # otherwise bake its initial scale into the traced step as a constant.
        self._build_optimizer()
        return super().make_train_function(force)

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        # Keras 3.15 pulls one batch here and reduces it across replicas to build the
        # model symbolically; under MultiWorkerMirroredStrategy that reduce fails on
        # dict batches. Every weight exists from construction, so only the optimizer
        # needs building.
        self._build_optimizer()

    # --------------------------------------------------------- serialisation
    def get_config(self) -> dict[str, Any]:
        config = {"name": self.name, "trainable": self.trainable}
        config.update(
            {
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "student": keras.saving.serialize_keras_object(self.student),
                "method": self.method,
                "teacher_layer": self.teacher_layer,
                "student_layer": self.student_layer,
                "num_relation_heads": self.num_relation_heads,
                "relations": list(self.relations),
                "relation_chunk_bytes": self.relation_chunk_bytes,
                "clipnorm": self.clipnorm,
                "stage_objectives": [objectives_lib.format_objective(o)
                                     for o in self.stage_objectives],
                "pooling": self.pooling.to_dict(),
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Distiller:
        config = dict(config)
        teacher = keras.saving.deserialize_keras_object(config.pop("teacher"))
        student = keras.saving.deserialize_keras_object(config.pop("student"))
        return cls(teacher, student, **config)
