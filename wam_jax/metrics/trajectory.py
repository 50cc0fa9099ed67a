"""Open-loop trajectory metrics with PhysicalAI-AV / Alpamayo semantics (numpy; accepts jax arrays).

Follows NVlabs/alpamayo `alpamayo_r1/metrics/distance_metrics.py` and `metric_api.DistanceMetrics`:

* errors are L2 in BEV (x, y only) by default;
* `min_ade`: per sample, the mean error over the full horizon; the sample with the smallest full-horizon ADE
  is chosen once (first one on ties), and that sample's mean error is reported; `min_ade/by_t={H:.1f}` are
  the prefix means of the *same* chosen sample over the first `int(H / time_step)` steps, for
  H in (0.5, 1, 3, 5) s, skipped when longer than the trajectory;
* `ade`: ADE of the top-logprob sample (Alpamayo feeds dummy zero logprobs, i.e. the first sample), and
  `ade/by_t=3.0` over the first `int(3.0 / time_step)` steps;
* metrics over N sample groups are averaged over N; with N > 1 a `<key>_std` (population std over N) is added
  for the min-over-K keys, as `summarize_metric` does.

Shapes: pred `[B, K, T, D]` or `[B, N, K, T, D]` (N groups of K samples), gt `[B, T, D]`, D >= 2.
Every function returns float64 numpy arrays.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

DEFAULT_HORIZONS_S = (0.5, 1.0, 3.0, 5.0)


def _as_f64(x, name: str) -> np.ndarray:
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be array-like (numpy or jax), got {type(x).__name__}.") from err


def _grouped(pred, gt):
    """-> pred [B, N, K, T, D], gt [B, T, D] as float64."""
    pred = _as_f64(pred, "pred")
    gt = _as_f64(gt, "gt")
    if pred.ndim == 4:
        pred = pred[:, None]
    if pred.ndim != 5:
        raise ValueError(f"pred must be [B, K, T, D] or [B, N, K, T, D], got shape {pred.shape}.")
    if gt.ndim != 3 or gt.shape[0] != pred.shape[0] or gt.shape[1:] != pred.shape[3:]:
        raise ValueError(f"gt must be [B, T, D] matching pred {pred.shape}, got {gt.shape}.")
    if pred.shape[-1] < 2:
        raise ValueError(f"trajectories need at least x, y in the last axis, got D={pred.shape[-1]}.")
    return pred, gt


def displacement(pred, gt, only_xy: bool = True) -> np.ndarray:
    """Per-step L2 error. pred [B, (N,) K, T, D], gt [B, T, D] -> [B, N, K, T]."""
    pred, gt = _grouped(pred, gt)
    diff = pred - gt[:, None, None]
    if only_xy:
        diff = diff[..., :2]
    return np.linalg.norm(diff, axis=-1)


def _check_horizon(steps: Optional[int], n_time: int) -> int:
    if steps is None:
        return n_time
    if not 1 <= steps <= n_time:
        raise ValueError(f"timestep_horizon={steps} must be in [1, T={n_time}].")
    return steps


def ade(pred, gt, timestep_horizon: Optional[int] = None, only_xy: bool = True) -> np.ndarray:
    """Mean L2 over the first `timestep_horizon` steps (all by default), per sample. -> [B, N, K]."""
    l2 = displacement(pred, gt, only_xy)
    return l2[..., :_check_horizon(timestep_horizon, l2.shape[-1])].mean(axis=-1)


def fde(pred, gt, timestep_horizon: Optional[int] = None, only_xy: bool = True) -> np.ndarray:
    """L2 at step `timestep_horizon` (1-based; the last step by default), per sample. -> [B, N, K]."""
    l2 = displacement(pred, gt, only_xy)
    return l2[..., _check_horizon(timestep_horizon, l2.shape[-1]) - 1]


def _summarize(out: Dict[str, np.ndarray], disable_summary: bool) -> Dict[str, np.ndarray]:
    """[B, N] values -> mean over N, plus `_std` (population) when N > 1 (Alpamayo `summarize_metric`)."""
    result = {}
    for name, val in out.items():
        mean = val.mean(axis=1)
        result[name] = mean
        if val.shape[1] > 1 and not disable_summary:
            result[name + "_std"] = np.sqrt(np.maximum((val**2).mean(axis=1) - mean**2, 0.0))
    return result


def _label(steps: int, time_step: float) -> str:
    return f"{steps * time_step:.1f}"


def min_ade(pred, gt, timestep_horizons: Sequence[int] = (5, 10, 30, 50), time_step: float = 0.1,
            only_xy: bool = True, disable_summary: bool = False) -> Dict[str, np.ndarray]:
    """Best-of-K ADE (Alpamayo `compute_minade`). Horizons are step counts; those > T are skipped.

    Returns {"min_ade": [B], "min_ade/by_t={steps*time_step:.1f}": [B], ...} (+ `_std` keys when N > 1).
    """
    l2 = displacement(pred, gt, only_xy)  # [B, N, K, T]
    idx = l2.mean(axis=-1).argmin(axis=2)  # [B, N], first minimum on ties
    best = np.take_along_axis(l2, idx[:, :, None, None], axis=2)[:, :, 0]  # [B, N, T]
    out = {"min_ade": best.mean(axis=-1)}
    for steps in timestep_horizons:
        if 1 <= steps <= best.shape[-1]:  # (a 0-step horizon, e.g. 0.5 s at 1 s steps, is skipped)
            out[f"min_ade/by_t={_label(steps, time_step)}"] = best[..., :steps].mean(axis=-1)
    return _summarize(out, disable_summary)


def min_fde(pred, gt, timestep_horizons: Sequence[int] = (5, 10, 30, 50), time_step: float = 0.1,
            only_xy: bool = True, disable_summary: bool = False) -> Dict[str, np.ndarray]:
    """Best-of-K final displacement error (Alpamayo `compute_minfde`): min over K at the last step, and at step
    `steps` for each horizon (each minimised over K independently)."""
    l2 = displacement(pred, gt, only_xy)
    out = {"min_fde": l2[..., -1].min(axis=2)}
    for steps in timestep_horizons:
        if 1 <= steps <= l2.shape[-1]:
            out[f"min_fde/by_t={_label(steps, time_step)}"] = l2[..., steps - 1].min(axis=2)
    return _summarize(out, disable_summary)


def distance_metrics(pred, gt, time_step: float = 0.1, logprob=None,
                     horizons_s: Sequence[float] = DEFAULT_HORIZONS_S, only_xy: bool = True) -> Dict[str, np.ndarray]:
    """The metric dict of Alpamayo's `DistanceMetrics.evaluate` (without corner distance), plus FDE keys.

    pred [B, (N,) K, T, D], gt [B, T, D]; logprob [B, (N,) K, T] or [B, (N,) K] selects the `ade` sample
    (argmax of the summed logprob; None = Alpamayo's dummy zeros = the first sample). All values are [B]:
    min_ade, min_ade/by_t=..., ade, ade/by_t=3.0 (if T covers 3 s), fde (of the `ade` sample), min_fde.
    """
    grouped = np.ndim(pred) == 5
    l2 = displacement(pred, gt, only_xy)  # [B, N, K, T]
    b, n_groups, k, n_time = l2.shape
    steps = [int(h / time_step) for h in horizons_s]
    out = min_ade(pred, gt, steps, time_step, only_xy, disable_summary=(n_groups == 1))

    if logprob is None:
        top = np.zeros((b, n_groups), dtype=np.int64)
    else:
        lp = _as_f64(logprob, "logprob")
        if not grouped:
            lp = lp[:, None]
        if lp.shape == (b, n_groups, k, n_time):
            lp = lp.sum(axis=-1)
        if lp.shape != (b, n_groups, k):
            raise ValueError(f"logprob must be [B, (N,) K, T] or [B, (N,) K] matching pred, got {np.shape(logprob)}.")
        top = lp.argmax(axis=-1)
    top_l2 = np.take_along_axis(l2, top[:, :, None, None], axis=2)[:, :, 0]  # [B, N, T]
    out["ade"] = top_l2.mean(axis=-1).mean(axis=-1)
    steps_3s = int(3.0 / time_step)
    if steps_3s <= n_time:
        out["ade/by_t=3.0"] = top_l2[..., :steps_3s].mean(axis=-1).mean(axis=-1)
    out["fde"] = top_l2[..., -1].mean(axis=-1)
    out.update(min_fde(pred, gt, (), time_step, only_xy, disable_summary=(n_groups == 1)))
    return out
