"""Pareto fronts, exact 2-D hypervolume and 'possibly optimal' marks on hand-checked points."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.pareto import hypervolume_2d, pareto_front, pareto_mask, possibly_optimal


def test_pareto_mask_hand_checked():
    # (acc, cost): A(70, 1) B(72, 2) C(71, 3) dominated by B; D(75, 5); E(75, 6) dominated by D
    acc = [70, 72, 71, 75, 75]
    cost = [1, 2, 3, 5, 6]
    assert pareto_mask(acc, cost).tolist() == [True, True, False, True, False]


def test_pareto_mask_ties_and_nan():
    # identical points are both kept; same cost lower accuracy is dominated; NaN is never on it
    acc = [70, 70, 69, math.nan, 80]
    cost = [1, 1, 1, 0.5, math.nan]
    assert pareto_mask(acc, cost).tolist() == [True, True, False, False, False]


def test_pareto_mask_equal_accuracy_higher_cost_is_dominated():
    assert pareto_mask([70, 70], [1, 2]).tolist() == [True, False]


def test_hypervolume_hand_checked():
    # union of cost [1,4] x acc [0,2] and cost [2,4] x acc [0,3]: 6 + 6 - 4 = 8
    assert hypervolume_2d([2, 3], [1, 2], (0, 4)) == pytest.approx(8.0)
    # one point: a rectangle
    assert hypervolume_2d([5], [1], (1, 3)) == pytest.approx(8.0)
    # a dominated point adds nothing; a point beyond the reference counts for nothing
    assert hypervolume_2d([2, 3, 1.5, 10], [1, 2, 3, 5], (0, 4)) == pytest.approx(8.0)
    # three-step staircase, ref (60, 10): (70,2) (75,4) (80,8):
    # (10-2)*(70-60) + (10-4)*(75-70) + (10-8)*(80-75) = 80 + 30 + 10 = 120
    assert hypervolume_2d([75, 80, 70], [4, 8, 2], (60, 10)) == pytest.approx(120.0)
    assert hypervolume_2d([], [], (0, 1)) == 0.0


def test_hypervolume_matches_optunas_helper_on_random_points():
    hv = pytest.importorskip("optuna._hypervolume")  # private: used here only as a cross-check
    rng = np.random.default_rng(3)
    for _ in range(5):
        acc, cost = rng.uniform(50, 80, 30), rng.uniform(1, 10, 30)
        mask = pareto_mask(acc, cost)
        # optuna minimizes every axis: (cost, -acc) against (ref_cost, -ref_acc)
        pts = np.stack([cost[mask], -acc[mask]], axis=1)
        expected = hv.compute_hypervolume(pts, np.array([11.0, -40.0]))
        assert hypervolume_2d(acc, cost, (40.0, 11.0)) == pytest.approx(expected)


def test_possibly_optimal_hand_checked():
    # front: A(70, cost 1), B(75, cost 3). C(72 [71, 74], cost 2): cheaper-or-equal front point
    # A has mean 70 < 74 -> possibly optimal. D(71 [70.5, 71.5], cost 4): B (cost 3) has mean
    # 75 >= 71.5 -> ruled out. E(74 [72, 76], cost 4): B's 75 < 76 -> possibly optimal.
    # F(70, no interval, cost 1.5): A's 70 >= 70 -> ruled out.
    mean = [70, 75, 72, 71, 74, 70]
    upper = [71, 76, 74, 71.5, 76, math.nan]
    cost = [1, 3, 2, 4, 4, 1.5]
    front = pareto_mask(mean, cost)
    assert front.tolist() == [True, True, True, False, False, False]  # C(72, 2) is on it too
    assert possibly_optimal(mean, upper, cost, front).tolist() == [True, True, True, False, True, False]


def test_pareto_front_table_reference_point_and_hypervolume():
    configs = pd.DataFrame({
        "config_id": [0, 1, 2], "config": ["a", "b", "c"], "label": ["a", "b", "c"],
        "n_seeds": [3, 3, 1],
        "val_top1_mean": [70.0, 75.0, 72.0], "val_top1_lo": [69.0, 74.0, math.nan],
        "val_top1_hi": [71.0, 76.0, math.nan],
        "madds": [1e6, 3e6, 4e6],
    })
    f = pareto_front(configs, "val_top1", "madds", chance=10.0)
    t = f.table.set_index("config")
    assert t["cost"].tolist() == [1.0, 3.0, 4.0]  # M madds
    assert t["on_front"].tolist() == [True, True, False]
    assert t["possibly_optimal"].tolist() == [True, True, False]  # c: 75 at 3M >= its 72
    assert f.reference == (10.0, pytest.approx(4.4))
    # (4.4-1)*(70-10) + (4.4-3)*(75-70) = 204 + 7 = 211
    assert f.hypervolume == pytest.approx(211.0)
    assert "chance" in f.reference_note and "M madds" in f.unit


def test_pareto_front_without_cost_says_so():
    configs = pd.DataFrame({"config_id": [0], "config": ["a"], "label": ["a"], "n_seeds": [1],
                            "val_top1_mean": [70.0], "val_top1_lo": [math.nan],
                            "val_top1_hi": [math.nan], "latency_ms": [math.nan]})
    f = pareto_front(configs, "val_top1", "latency_ms")
    assert f.table.empty and "not recorded" in f.reference_note
