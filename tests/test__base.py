"""Tests for keras_bn/callbacks/_base.py's ReadBudget (the cadence itself: tests/test_callbacks.py;
the budget in the preset's fit: tests/test_preset.py)."""

from __future__ import annotations

import pytest

from keras_bn.callbacks import ReadBudget


class ManualClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _budget(share):
    clock = ManualClock()
    return ReadBudget(share, clock=clock), clock


def test_the_first_two_steps_read_then_a_step_waits_until_the_reads_fit_the_share():
    budget, clock = _budget(0.1)
    for step in (10, 20):  # each read step's reads take 1 s
        assert budget.allows(step)
        budget.spend(1.0)
        clock.now += 1.0
    # The last read step cost 1 s, decided at t=1: the next read waits until t >= 1 + 1 / 0.1.
    clock.now = 10.9
    assert not budget.allows(30)
    clock.now = 11.0
    assert budget.allows(40)
    assert (budget.read_steps, budget.skipped_steps) == (3, 1)


def test_every_caller_of_one_step_gets_the_same_answer():
    budget, clock = _budget(0.5)
    for step in (1, 2):
        assert budget.allows(step)
        budget.spend(1.0)
    assert not budget.allows(3)
    clock.now = 100.0  # later callers of step 3 (another callback) are not read either
    assert not budget.allows(3)
    assert budget.allows(4)
    assert budget.allows(4)
    assert (budget.read_steps, budget.skipped_steps) == (3, 1)


def test_a_one_off_expensive_read_does_not_silence_the_next_ones():
    budget, clock = _budget(0.01)
    costs = iter([5.0, 0.001])  # the first reads compile their functions
    for step in (1, 2):
        assert budget.allows(step)
        budget.spend(next(costs))
    clock.now = 0.1  # 0.001 s of reads fits 1% of 0.1 s; the 5 s one would not
    assert budget.allows(3)
    budget.spend(0.001)
    clock.now = 0.15  # 0.001 s does not fit 1% of the 0.05 s since step 3
    assert not budget.allows(4)


def test_a_new_fit_decides_its_steps_afresh_and_keeps_the_costs():
    budget, clock = _budget(0.5)
    for step in (100, 200):
        assert budget.allows(step)
        budget.spend(1.0)
    assert not budget.allows(300)  # the fit ends here
    budget._new_fit()  # a new model's fit with the same callbacks: its steps count from 0 again
    budget._new_fit()  # every callback of the budget calls it at train begin
    assert not budget.allows(300)  # t=0 still: the costs of the last fit's reads still count
    budget._new_fit()
    clock.now = 2.0  # 1 s of reads fits half of the 2 s since step 200's decision
    assert budget.allows(300)  # the last fit's answer for step 300 is not reused
    assert (budget.read_steps, budget.skipped_steps) == (3, 2)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), "0.1", True])
def test_a_share_outside_zero_to_one_is_refused_by_name(bad):
    with pytest.raises((TypeError, ValueError), match="max_overhead"):
        ReadBudget(bad)
