"""Benchmark eval commands (`eval-navsim`, `eval-physicalai`) on fixtures written in the real on-disk formats,
with expected scores computed by hand (arithmetic in the comments) and float64 closed-form references."""

import csv
import json
import math
import os
import pickle
import sqlite3
import struct

import numpy as np
import pytest
import shapely
from shapely import affinity

from data_pipelines import fixtures
from wam_jax.__main__ import main
from wam_jax.evaluation import benchmarks, navsim_eval, physicalai_eval


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return {row["planner"]: row for row in json.load(f)["summary"]}


# ---------------------------------------------------------------------------------------------------------------
# PhysicalAI-AV
#
# The fixture (data_pipelines.fixtures.write_physicalai_fixture) holds two 20 s clips driving circular arcs at
# v = 10 m/s with yaw rates w = +0.05 and -0.05 rad/s, egomotion at 100 Hz. At t0 = 5.1 s the logged future in
# the t0 rig frame is exactly the arc: x(t) = R sin(w t), y(t) = R (1 - cos(w t)), R = v / w = 200 m (0.1 s
# multiples fall on 100 Hz samples, so the interpolation adds no error).
#
# constant_velocity drives straight at the speed the loader measures: the central difference over +-50 ms,
# i.e. the chord of the arc over 0.1 s: v_c = 2 R sin(w 0.05) / 0.1 = 10 sin(0.0025) / 0.0025 = 9.9999896 m/s,
# along the tangent (the symmetric chord is parallel to it). Its error at t is
#   e(t) = sqrt((v_c t - R sin(w t))^2 + (R (1 - cos(w t)))^2):
#   t = 3 s: x_gt = 200 sin(0.15) = 29.88765, y_gt = 200 (1 - cos 0.15) = 2.24579, v_c t = 29.99997
#            -> FDE@3s = sqrt(0.11232^2 + 2.24579^2) = 2.2486 m
#   t = 4 s: x_gt = 200 sin(0.2) = 39.73387, y_gt = 200 (1 - cos 0.2) = 3.98669, v_c t = 39.99996
#            -> FDE@4s = sqrt(0.26609^2 + 3.98669^2) = 3.9956 m
#   ADE@3s = mean of e(0.1 k), k = 1..30 ~ mean of 0.25 (0.1 k)^2 = 0.0025 * 31 * 61 / 6 = 0.788 m (y dominates)
# The mirrored clip (w = -0.05) has the same errors, so the summary means equal the per-clip values.

V, W = 10.0, 0.05
R = V / W
V_C = 2 * R * math.sin(W * 0.05) / 0.1


def cv_error(t):
    t = np.asarray(t, np.float64)
    return np.hypot(V_C * t - R * np.sin(W * t), R * (1 - np.cos(W * t)))


@pytest.fixture(scope="module")
def pai_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pai"))
    fixtures.write_physicalai_fixture(root)
    return root


def test_physicalai_eval_cli_scores_match_hand_computation(pai_root, tmp_path, capsys):
    out = str(tmp_path / "pai")
    assert main(["eval-physicalai", "--src", pai_root, "--planners", "expert,constant_velocity", "--out", out]) == 0
    assert "ade_3s" in capsys.readouterr().out
    rows = read_csv(os.path.join(out, "scenes.csv"))
    assert [(r["planner"], r["clip_id"], r["t0_us"]) for r in rows] == [
        (p, c, "5100000") for p in ("expert", "constant_velocity")
        for c in ("0a1b2c3d-0000-4000-8000-000000000001", "0a1b2c3d-0000-4000-8000-000000000002")]
    t = np.arange(1, 65) * 0.1
    err = cv_error(t)
    expect_cv = {"ade_3s": err[:30].mean(), "fde_3s": err[29], "ade_4s": err[:40].mean(), "fde_4s": err[39],
                 "min_ade": err.mean(), "min_ade_3s": err[:30].mean()}
    # the hand values from the comment above
    assert expect_cv["fde_3s"] == pytest.approx(2.2486, abs=1e-4)
    assert expect_cv["fde_4s"] == pytest.approx(3.9956, abs=1e-4)
    assert expect_cv["ade_3s"] == pytest.approx(0.788, abs=0.01)
    for r in rows:
        for key, value in expect_cv.items():
            want = 0.0 if r["planner"] == "expert" else value
            assert float(r[key]) == pytest.approx(want, abs=2e-6), (r["planner"], key)
    s = summary(out)
    assert s["constant_velocity"]["scenes"] == 2
    assert s["constant_velocity"]["ade_4s"] == pytest.approx(expect_cv["ade_4s"], abs=2e-6)
    assert s["expert"]["fde_4s"] == pytest.approx(0.0, abs=1e-6)
    table = open(os.path.join(out, "summary.txt")).read()
    assert table.splitlines()[0].split() == list(physicalai_eval.SUMMARY_COLUMNS)


def test_physicalai_min_ade_picks_best_sample_and_ade_uses_first():
    # Two samples over 40 steps: sample 0 is off by 2 m everywhere, sample 1 by 1 m. Single-trajectory ADE/FDE
    # score sample 0 (2.0), min_ade the better sample 1 (1.0).
    gt = np.zeros((40, 3))
    pred = np.zeros((2, 40, 3))
    pred[0, :, 1] = 2.0
    pred[1, :, 1] = 1.0
    row = physicalai_eval.score_clip(pred, gt)
    assert row["ade_3s"] == row["fde_3s"] == row["ade_4s"] == row["fde_4s"] == 2.0
    assert row["min_ade"] == row["min_ade_3s"] == 1.0


def test_physicalai_eval_horizon_and_errors(pai_root, tmp_path, capsys):
    # 3 s horizon: the 4 s columns are empty ("-" / NaN), the 3 s ones unchanged.
    out = str(tmp_path / "h3")
    assert main(["eval-physicalai", "--src", pai_root, "--planners", "constant_velocity", "--horizon", "3",
                 "--out", out]) == 0
    row = read_csv(os.path.join(out, "scenes.csv"))[0]
    assert math.isnan(float(row["ade_4s"]))
    assert float(row["fde_3s"]) == pytest.approx(cv_error(3.0), abs=2e-6)
    capsys.readouterr()
    assert main(["eval-physicalai", "--src", str(tmp_path / "missing"), "--out", out]) == 2
    assert "features.csv" in capsys.readouterr().err
    assert main(["eval-physicalai", "--src", pai_root, "--planners", "nope", "--out", out]) == 2
    assert "unknown benchmark planner" in capsys.readouterr().err
