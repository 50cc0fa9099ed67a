"""minADE / ADE / FDE against a plain float64 loop reference written independently of the implementation."""

import math

import numpy as np
import pytest

from wam_jax.metrics import trajectory as tm


def _dist(a, b):
    return math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2)  # BEV: x, y only


def _reference(pred, gt, time_step, horizons_s=(0.5, 1.0, 3.0, 5.0)):
    """Alpamayo DistanceMetrics semantics with explicit loops. pred [B, N, K, T, D], gt [B, T, D]."""
    b_n, n_n, k_n, t_n, _ = pred.shape
    res = {}
    for b in range(b_n):
        per_group = {}
        ade_top, ade3_top, fde_top, minfde = [], [], [], []
        for n in range(n_n):
            best_k, best_val = None, None
            for k in range(k_n):
                total = 0.0
                for t in range(t_n):
                    total += _dist(pred[b, n, k, t], gt[b, t])
                val = total / t_n
                if best_val is None or val < best_val:  # first minimum wins on ties
                    best_k, best_val = k, val
            per_group.setdefault("min_ade", []).append(best_val)
            for h in horizons_s:
                steps = int(h / time_step)
                if steps <= t_n:
                    s = sum(_dist(pred[b, n, best_k, t], gt[b, t]) for t in range(steps)) / steps
                    per_group.setdefault(f"min_ade/by_t={steps * time_step:.1f}", []).append(s)
            ade_top.append(sum(_dist(pred[b, n, 0, t], gt[b, t]) for t in range(t_n)) / t_n)
            steps3 = int(3.0 / time_step)
            if steps3 <= t_n:
                ade3_top.append(sum(_dist(pred[b, n, 0, t], gt[b, t]) for t in range(steps3)) / steps3)
            fde_top.append(_dist(pred[b, n, 0, t_n - 1], gt[b, t_n - 1]))
            minfde.append(min(_dist(pred[b, n, k, t_n - 1], gt[b, t_n - 1]) for k in range(k_n)))
        for key, vals in per_group.items():
            res.setdefault(key, []).append(sum(vals) / len(vals))
            if n_n > 1:
                mean = sum(vals) / len(vals)
                res.setdefault(key + "_std", []).append(math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)))
        res.setdefault("ade", []).append(sum(ade_top) / n_n)
        if ade3_top:
            res.setdefault("ade/by_t=3.0", []).append(sum(ade3_top) / n_n)
        res.setdefault("fde", []).append(sum(fde_top) / n_n)
        res.setdefault("min_fde", []).append(sum(minfde) / n_n)
        if n_n > 1:
            m = sum(minfde) / n_n
            res.setdefault("min_fde_std", []).append(math.sqrt(sum((v - m) ** 2 for v in minfde) / n_n))
    return {k: np.array(v) for k, v in res.items()}


@pytest.mark.parametrize("shape,time_step", [((3, 1, 6, 64, 3), 0.1), ((2, 3, 4, 20, 2), 0.1),
                                             ((2, 1, 5, 12, 3), 0.5)])
def test_distance_metrics_match_loop_reference(shape, time_step):
    rng = np.random.default_rng(0)
    gt = np.cumsum(rng.normal(size=(shape[0], shape[3], shape[4])), axis=1)
    pred = gt[:, None, None] + rng.normal(scale=2.0, size=shape)
    got = tm.distance_metrics(pred, gt, time_step=time_step)
    want = _reference(pred, gt, time_step)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12, err_msg=key)
    # ungrouped input [B, K, T, D] is the N = 1 case
    if shape[1] == 1:
        got4 = tm.distance_metrics(pred[:, 0], gt, time_step=time_step)
        for key in want:
            np.testing.assert_allclose(got4[key], want[key], rtol=1e-12, err_msg=key)


def test_horizon_labels_and_skipping():
    gt = np.zeros((1, 12, 2))
    pred = np.ones((1, 2, 12, 2))
    out = tm.distance_metrics(pred, gt, time_step=0.5)  # 0.5 s -> 1 step, 1 s -> 2, 3 s -> 6, 5 s -> 10
    assert {"min_ade/by_t=0.5", "min_ade/by_t=1.0", "min_ade/by_t=3.0", "min_ade/by_t=5.0"} <= set(out)
    out_short = tm.distance_metrics(np.ones((1, 2, 20, 2)), np.zeros((1, 20, 2)), time_step=0.1)
    assert "min_ade/by_t=3.0" not in out_short and "ade/by_t=3.0" not in out_short
    assert "min_ade/by_t=1.0" in out_short


def test_selection_uses_full_horizon_not_prefix():
    # sample 0 is perfect early and bad late; sample 1 is mediocre everywhere but better over the full horizon.
    gt = np.zeros((1, 10, 2))
    pred = np.zeros((1, 2, 10, 2))
    pred[0, 0, 5:, 0] = 10.0  # ADE 5.0, prefix(5) 0.0
    pred[0, 1, :, 0] = 1.0  # ADE 1.0, prefix(5) 1.0
    out = tm.min_ade(pred, gt, timestep_horizons=(5,), time_step=0.1)
    assert out["min_ade"][0] == pytest.approx(1.0)
    assert out["min_ade/by_t=0.5"][0] == pytest.approx(1.0)  # the chosen sample's prefix, not the best prefix


def test_ties_pick_first_sample_and_xy_only():
    gt = np.zeros((1, 4, 3))
    pred = np.zeros((1, 2, 4, 3))
    pred[0, 0, :, 0] = 1.0
    pred[0, 1, :, 1] = 1.0  # same ADE as sample 0
    pred[0, 1, :, 2] = 100.0  # z is ignored in BEV
    out = tm.distance_metrics(pred, gt, time_step=1.0, horizons_s=())
    assert out["min_ade"][0] == pytest.approx(1.0)
    assert tm.ade(pred, gt)[0, 0].tolist() == pytest.approx([1.0, 1.0])
    assert tm.ade(pred, gt, only_xy=False)[0, 0, 1] == pytest.approx(math.sqrt(1 + 100**2))


def test_logprob_selects_ade_sample():
    gt = np.zeros((1, 5, 2))
    pred = np.zeros((1, 3, 5, 2))
    pred[0, 1, :, 0] = 2.0
    pred[0, 2, :, 0] = 3.0
    lp = np.array([[0.0, 5.0, 1.0]])
    out = tm.distance_metrics(pred, gt, time_step=1.0, logprob=lp)
    assert out["ade"][0] == pytest.approx(2.0) and out["fde"][0] == pytest.approx(2.0)
    assert out["min_ade"][0] == pytest.approx(0.0)
    per_step = np.broadcast_to(lp[..., None] / 5.0, (1, 3, 5))
    assert tm.distance_metrics(pred, gt, time_step=1.0, logprob=per_step)["ade"][0] == pytest.approx(2.0)


def test_fde_and_min_fde():
    rng = np.random.default_rng(1)
    gt = rng.normal(size=(2, 7, 2))
    pred = rng.normal(size=(2, 3, 7, 2))
    f = tm.fde(pred, gt)
    for b in range(2):
        for k in range(3):
            assert f[b, 0, k] == pytest.approx(_dist(pred[b, k, 6], gt[b, 6]))
    mf = tm.min_fde(pred, gt, timestep_horizons=(3,), time_step=1.0)
    assert mf["min_fde"][1] == pytest.approx(min(_dist(pred[1, k, 6], gt[1, 6]) for k in range(3)))
    assert mf["min_fde/by_t=3.0"][0] == pytest.approx(min(_dist(pred[0, k, 2], gt[0, 2]) for k in range(3)))


def test_accepts_jax_arrays():
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(2)
    gt = rng.normal(size=(2, 30, 2))
    pred = rng.normal(size=(2, 4, 30, 2))
    got = tm.distance_metrics(jnp.asarray(pred, dtype=jnp.float32), jnp.asarray(gt, dtype=jnp.float32))
    want = tm.distance_metrics(pred.astype(np.float32), gt.astype(np.float32))
    for key in want:
        assert isinstance(got[key], np.ndarray) and got[key].dtype == np.float64
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6)


def test_shape_errors_are_explained():
    with pytest.raises(ValueError, match="pred must be"):
        tm.ade(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)))
    with pytest.raises(ValueError, match="gt must be"):
        tm.ade(np.zeros((2, 4, 3, 2)), np.zeros((2, 5, 2)))
    with pytest.raises(ValueError, match="timestep_horizon"):
        tm.ade(np.zeros((1, 1, 3, 2)), np.zeros((1, 3, 2)), timestep_horizon=4)
