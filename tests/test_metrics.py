"""The paper's speed-up metric on hand-made curves."""

import math

import pytest

from normlab.lab.metrics import mean_curve, mean_std, speedup, steps_to_reach

STEPS = [0, 100, 200, 300, 400]


def test_steps_to_reach_first_crossing_and_never():
    assert steps_to_reach(STEPS, [0.1, 0.5, 0.7, 0.6, 0.8], 0.7) == 200
    assert steps_to_reach(STEPS, [0.1, 0.2, 0.3, 0.4, 0.5], 0.7) is None
    with pytest.raises(ValueError, match="differ in length"):
        steps_to_reach(STEPS, [0.1], 0.5)


def test_speedup_is_baseline_steps_over_method_steps_to_baseline_best():
    base = [0.1, 0.3, 0.5, 0.6, 0.55]  # best 0.6, reached at step 300
    fast = [0.1, 0.62, 0.7, 0.8, 0.8]  # reaches 0.6 at step 100
    r = speedup(STEPS, base, fast)
    assert r["target"] == 0.6 and r["baseline_steps"] == 300 and r["method_steps"] == 100
    assert r["speedup"] == pytest.approx(3.0)


def test_speedup_of_slower_method_is_below_one():
    base = [0.1, 0.6, 0.6, 0.6, 0.6]
    slow = [0.1, 0.2, 0.3, 0.4, 0.61]
    assert speedup(STEPS, base, slow)["speedup"] == pytest.approx(0.25)


def test_method_that_never_reaches_target_has_no_speedup():
    r = speedup(STEPS, [0.1, 0.3, 0.9, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4, 0.89])
    assert r["method_steps"] is None and r["speedup"] is None


def test_baseline_against_itself_is_one():
    base = [0.1, 0.3, 0.5, 0.6, 0.55]
    assert speedup(STEPS, base, base)["speedup"] == 1.0


def test_mean_curve_pads_diverged_runs_with_fill():
    assert mean_curve([[0.2, 0.4, 0.6], [0.4]], fill=0.1) == pytest.approx([0.3, 0.25, 0.35])
    assert mean_curve([[0.4], [0.2]], fill=0.1, length=3) == pytest.approx([0.3, 0.1, 0.1])


def test_mean_std_uses_sample_std():
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))
