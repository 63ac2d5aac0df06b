"""Loss specs and stages: parsing, formatting and every error a user can make."""

from __future__ import annotations

import pytest

from tf_minilm.distill.objectives import (
    ObjectiveError,
    Stage,
    extend_stages,
    format_objective,
    needs_alignment,
    parse_objective,
    parse_stages,
    relation_term,
    stage_at,
)


def test_specs_parse_with_weights_in_order_and_format_back():
    objective = parse_objective("embedding_mse + 0.5*hidden_mse+ 2 * minilmv2")
    assert objective == (("embedding_mse", 1.0), ("hidden_mse", 0.5), ("minilmv2", 2.0))
    assert parse_objective(format_objective(objective)) == objective
    assert parse_objective([("minilm", 1)]) == (("minilm", 1.0),)
    assert relation_term(objective) == "minilmv2" and needs_alignment(objective)
    assert relation_term(parse_objective("hidden_mse")) is None
    assert not needs_alignment(parse_objective("minilm"))
    # a zero weight is allowed beside a positive one (the term is computed and logged)
    assert parse_objective("minilmv2 + 0*embedding_mse")[1] == ("embedding_mse", 0.0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("embedding_mse +", "empty term"),
        ("embeding_mse", "unknown loss term 'embeding_mse'; choose from"),
        ("x*hidden_mse", "weight 'x' of 'hidden_mse' is not a number"),
        ("-1*hidden_mse", "must be a finite number >= 0, got -1.0"),
        ("nan*hidden_mse", "finite number"),
        ("inf*hidden_mse", "finite number"),
        ("hidden_mse + hidden_mse", "given twice"),
        ("minilm + minilmv2", "choose one of minilm and minilmv2"),
        ("0*hidden_mse", "every weight .* is 0"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ObjectiveError, match=message):
        parse_objective(spec)


def test_stages_fill_the_run_and_extend():
    stages = parse_stages(["minilmv2:100", "embedding_mse + hidden_mse:150", "hidden_mse"], 400)
    assert [stage.end_step for stage in stages] == [100, 250, 400]
    assert [stage_at(stages, step) for step in (0, 99, 100, 249, 250, 399)] == [0, 0, 1, 1, 2, 2]
    assert parse_stages(["minilmv2:100", "hidden_mse:300"], 400)[-1].end_step == 400
    longer = extend_stages(stages, 600)
    assert longer[:2] == stages[:2] and longer[-1] == Stage(stages[-1].objective, 600)
    assert stages[0].to_dict() == {"loss": "minilmv2", "end_step": 100}
    with pytest.raises(ObjectiveError, match="cannot shorten"):
        extend_stages(stages, 300)


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([], "one or more stages"),
        (["minilmv2", "hidden_mse"], r"stage 1 \('minilmv2'\) needs its length"),
        (["minilmv2:x", "hidden_mse"], "'x' is not a whole number of steps"),
        (["minilmv2:0", "hidden_mse"], "must last at least 1 step"),
        (["minilmv2:100", "hidden_mse:50"], "last 150 steps in all, but the run has 400"),
        (["minilmv2:400", "hidden_mse"], r"stage 2 .* at or after the run's end"),
        (["minilmv2:100", "hiden_mse"], r"stage 2 \('hiden_mse'\): unknown loss term"),
    ],
)
def test_bad_stages_name_the_stage(specs, message):
    with pytest.raises(ObjectiveError, match=message):
        parse_stages(specs, 400)
