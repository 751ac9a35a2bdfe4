"""The paper's speed-up metric on hand-made curves, and the evaluation schedule."""

import math

import pytest

from normlab.lab.config import TrainConfig
from normlab.lab.metrics import (format_speedup, mean_curve, mean_std, resolution,
                                 resolution_text, speedup, steps_to_reach)
from normlab.lab.train import eval_schedule

STEPS = [0, 100, 200, 300, 400]


def test_steps_to_reach_first_crossing_and_never():
    assert steps_to_reach(STEPS, [0.1, 0.5, 0.7, 0.6, 0.8], 0.7) == 200
    assert steps_to_reach(STEPS, [0.1, 0.2, 0.3, 0.4, 0.5], 0.7) is None
    with pytest.raises(ValueError, match="differ in length"):
        steps_to_reach(STEPS, [0.1], 0.5)
    with pytest.raises(ValueError, match="must increase"):
        steps_to_reach([0, 20, 10], [0.1, 0.2, 0.3], 0.5)


def test_steps_to_reach_interpolates_linearly_between_evaluations():
    # 0.4 lies halfway from 0.2 (step 10) to 0.6 (step 20): step 15.
    assert steps_to_reach([0, 10, 20], [0.1, 0.2, 0.6], 0.4) == pytest.approx(15.0)
    # a quarter of the way from 0.5 (step 300) to 0.9 (step 700): 400.
    assert steps_to_reach([0, 300, 700], [0.1, 0.5, 0.9], 0.6) == pytest.approx(400.0)


def test_first_interval_is_not_interpolated():
    # Reached by the first evaluation after step 0: counts as that step, not a fraction.
    assert steps_to_reach([0, 10, 20], [0.1, 0.5, 0.6], 0.3) == 10
    assert steps_to_reach([0, 10, 20], [0.9, 0.5, 0.6], 0.3) == 10


def test_speedup_is_baseline_steps_over_method_steps_to_baseline_best():
    base = [0.1, 0.3, 0.5, 0.6, 0.55]  # best 0.6, reached at step 300
    fast = [0.1, 0.62, 0.7, 0.8, 0.8]  # reaches 0.6 by step 100, the first evaluation
    r = speedup(STEPS, base, fast)
    assert r["target"] == 0.6 and r["baseline_steps"] == 300 and r["method_steps"] == 100
    assert r["speedup"] == pytest.approx(3.0)
    # 3.0 = 300 / 100 is the most this schedule can show: a lower bound, flagged.
    assert r["at_cap"] and r["speedup_max"] == pytest.approx(3.0)
    assert r["speedup_min"] == pytest.approx(300 / 400)


def test_speedup_of_slower_method_is_below_one():
    base = [0.1, 0.6, 0.6, 0.6, 0.6]
    slow = [0.1, 0.2, 0.3, 0.4, 0.61]  # 0.6 at 300 + 0.2/0.21 * 100 steps
    r = speedup(STEPS, base, slow)
    assert r["speedup"] == pytest.approx(100 / (300 + 0.2 / 0.21 * 100))
    assert not r["at_cap"]


def test_method_that_never_reaches_target_has_no_speedup():
    r = speedup(STEPS, [0.1, 0.3, 0.9, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4, 0.89])
    assert r["method_steps"] is None and r["speedup"] is None and not r["at_cap"]


def test_baseline_against_itself_is_one():
    base = [0.1, 0.3, 0.5, 0.6, 0.55]
    assert speedup(STEPS, base, base)["speedup"] == 1.0


def test_resolution_is_set_by_the_first_and_last_evaluation():
    assert resolution([0, 50, 100, 1000], 1000) == (1.0, 20.0)
    assert resolution([0, 1, 2, 4, 1000], 1000) == (1.0, 1000.0)
    text = resolution_text([0, 50, 100, 1000], "none", 1000)
    assert "1.00x" in text and "20.00x" in text and "interpolated" in text
    assert format_speedup(20.0, at_cap=True) == "≥ 20.00x"
    assert format_speedup(3.333) == "3.33x" and format_speedup(None) == "never"


def test_log_schedule_adds_powers_of_two_to_every_k():
    steps = eval_schedule(TrainConfig(steps=1000, eval_every=50))
    assert steps == sorted(set(range(0, 1001, 50)) | {2 ** k for k in range(10)})
    assert steps[:4] == [0, 1, 2, 4] and steps[-1] == 1000
    linear = eval_schedule(TrainConfig(steps=120, eval_every=50, eval_schedule="linear"))
    assert linear == [0, 50, 100, 120]
    # a power of two equal to the budget is not repeated
    assert eval_schedule(TrainConfig(steps=8, eval_every=4)) == [0, 1, 2, 4, 8]


def test_bad_schedule_init_and_scaling_are_one_clear_error():
    for field, known in (("eval_schedule", "log, linear"), ("init", "torch, glorot"),
                         ("input_scaling", "standardize, unit, signed")):
        with pytest.raises(ValueError, match=f"unknown {field} 'x'; known: {known}"):
            TrainConfig(**{field: "x"})


def test_mean_curve_pads_diverged_runs_with_fill():
    assert mean_curve([[0.2, 0.4, 0.6], [0.4]], fill=0.1) == pytest.approx([0.3, 0.25, 0.35])
    assert mean_curve([[0.4], [0.2]], fill=0.1, length=3) == pytest.approx([0.3, 0.1, 0.1])


def test_mean_std_uses_sample_std():
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))


def test_recovered_fraction_is_share_of_the_reference_gain():
    from normlab.lab.metrics import recovered_fraction
    # the paper's MNIST numbers: (75.2 - 24.6) / (85.6 - 24.6) = 0.8295
    assert recovered_fraction(0.246, 0.856, 0.752) == pytest.approx(50.6 / 61.0)
    assert math.isnan(recovered_fraction(0.5, 0.4, 0.6))
