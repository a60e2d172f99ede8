"""Per-example values packed into trial user attrs: exact round trips, small attrs."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from search.study.record import (
    decode_examples,
    decode_values,
    encode_examples,
    encode_values,
    json_stderr,
)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 2000])
def test_zero_one_values_round_trip_as_bits(n):
    values = tuple(float(v) for v in np.random.default_rng(n).integers(0, 2, n))
    encoded = encode_values(values)
    assert ("bits" in encoded) == (n > 0) and encoded["n"] == n
    assert decode_values(json.loads(json.dumps(encoded))) == values


def test_two_thousand_bits_take_about_340_characters():
    encoded = encode_values([1.0, 0.0] * 1000)
    assert len(encoded["bits"]) <= 340
    assert len(json.dumps(encoded)) < 370


def test_other_values_round_trip_as_float32():
    values = (0.25, 3.5, -1.0, 1e-8, 12345.678, math.inf)
    encoded = encode_values(values)
    assert "f32" in encoded and encoded["n"] == len(values)
    decoded = decode_values(json.loads(json.dumps(encoded)))
    assert decoded == tuple(float(np.float32(v)) for v in values)
    assert decoded[:3] == values[:3]  # exactly representable values come back exactly
    nan = decode_values(encode_values([0.5, math.nan]))
    assert nan[0] == 0.5 and math.isnan(nan[1])


def test_a_truncated_record_is_refused():
    encoded = encode_values([0.5, 0.25])
    with pytest.raises(ValueError, match="expected 3 float32 values"):
        decode_values({**encoded, "n": 3})


def test_examples_of_several_tasks_and_standard_errors_as_json():
    examples = {"a/acc": (1.0, 0.0, 1.0), "b/perplexity": (2.5, 3.0)}
    assert decode_examples(encode_examples(examples)) == examples
    assert json_stderr({"x": 0.1, "y": math.nan}) == {"x": 0.1, "y": None}


def test_a_trial_record_round_trips_through_optuna_and_writes_only_what_is_set() -> None:
    import optuna

    from search.study.record import PLAN_FIELDS, SCORE_FIELDS, TrialRecord

    record = TrialRecord(
        number=0,
        values=(0.5, 0.25),
        plan={"method": "linear"},
        plan_key="k",
        coefficients={"a": [0.5]},
        task_scores={"t/acc": 0.5},
        examples=encode_examples({"t/acc": (1.0, 0.0)}),
        strategies={"staged": {"rung": 2, "rungs": 2, "violation": 0.0}},
        constraints=(-0.1,),
    )
    attrs = record.to_attrs()
    assert "duplicate_of" not in attrs and "eval_s" not in attrs  # defaults are not written
    assert attrs["constraints"] == [-0.1] and attrs["strategies"]["staged"]["violation"] == 0.0
    trial = optuna.trial.create_trial(values=list(record.values), user_attrs=attrs)
    back = TrialRecord.from_trial(trial)
    assert back == dataclasses.replace(record, number=trial.number)
    assert back.feasible and not back.stopped and back.per_example() == {"t/acc": (1.0, 0.0)}
    stopped = TrialRecord(number=1, strategies={"any": {"stopped_by": 0}}, constraints=(-1.0,))
    assert stopped.stopped and stopped.stopped_by == 0 and not stopped.feasible
    assert TrialRecord(number=2, constraints=(0.5,)).feasible is False
    assert TrialRecord(number=3).key == "trial-3"
    assert set(PLAN_FIELDS) == {"plan", "plan_key", "params", "coefficients", "worker"}
    assert "values" in SCORE_FIELDS and "examples" in SCORE_FIELDS and "worker" not in SCORE_FIELDS
    again = TrialRecord(number=4, plan_key="k").with_scores_of(record, duplicate_of=0)
    assert again.values == record.values and again.examples == record.examples
    assert again.number == 4 and again.duplicate_of == 0 and again.constraints == ()


def test_a_study_written_with_the_old_staged_attrs_is_read_into_the_strategy_fields() -> None:
    """Studies written before the strategies kept their fields under one attr still read."""
    import optuna

    from search.study.record import TrialRecord

    old = {"rung": 1, "rungs": 3, "racing_violation": 0.5, "stopped_by": 4, "eval_s": 1.5}
    record = TrialRecord.from_trial(optuna.trial.create_trial(values=[0.1], user_attrs=old))
    assert record.strategies == {
        "staged": {"rung": 1, "rungs": 3, "violation": 0.5, "stopped_by": 4}
    }
    assert record.stopped_by == 4 and record.stopped and not record.feasible
    assert record.eval_s == 1.5
