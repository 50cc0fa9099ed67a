"""The closed-loop episode score in highway-env, built from the NAVSIM scorer's own sub-metrics.

    PDMS = NC · DAC · (5 TTC + 5 EP + 2 C) / 12         (`navsim.pdms_aggregate`)
    NC   0 if the ego collided (highway-env `crashed`), else 1
    DAC  0 if any ego corner left the lanes at any step, else 1
    TTC  0 if at any step the ego box, moved forward at constant velocity by each of `navsim.TTC_OFFSETS_S`,
         overlaps a vehicle ahead of it moved the same way, else 1
    EP   progress normalised by the expert's progress on the same seed (`navsim.normalized_progress`: the
         5 m rule; the expert is the reference proposal)
    C    every comfort signal the highway trajectory yields (longitudinal and lateral acceleration, jerk
         magnitude, yaw rate) stays inside `navsim_comfort.COMFORT_BOUNDS`
ADE of one plan is `trajectory.ade` against the expert's own future from the same state.

Only the geometry differs from NAVSIM: highway-env gives poses and speeds (no logged accelerations), and its
lanes are straight, so collisions, drivable area and "ahead" come from the simulator's own boxes and lanes.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from wam_jax.metrics import navsim, navsim_comfort, trajectory

HIGHWAY_COMFORT = ("lon_accel", "lat_accel", "jerk", "yaw_rate")


def ttc_violation(ego: np.ndarray, others: np.ndarray, offsets_s: Sequence[float] = navsim.TTC_OFFSETS_S,
                  range_m: float = 60.0, length: float = 5.0, width: float = 2.0) -> bool:
    """Whether the ego box `ego` = [x, y, heading, speed] (world frame) moved forward at constant velocity by any
    of `offsets_s` overlaps a vehicle ahead of it (`others` [M, 6] rows x, y, heading, speed, length, width)
    moved the same way. "Ahead" = the other centre lies in front of the ego centre along the ego heading."""
    if len(others) == 0:
        return False
    from shapely.geometry import Polygon

    from wam_jax.sim.highway import box_corners   # imported here, once per check: the sim pulls in highway-env
    box = lambda x, y, heading, length, width: Polygon(box_corners((x, y), heading, length, width))
    x, y, h, v = (float(a) for a in ego[:4])
    d = others[:, :2] - np.array([x, y])
    ahead = (d @ np.array([math.cos(h), math.sin(h)]) > 0) & (np.hypot(d[:, 0], d[:, 1]) < range_m)
    for row in others[ahead]:
        ox, oy, oh, ov, ol, ow = (float(a) for a in row)
        for tau in offsets_s:
            ego_box = box(x + v * tau * math.cos(h), y + v * tau * math.sin(h), h, length, width)
            other_box = box(ox + ov * tau * math.cos(oh), oy + ov * tau * math.sin(oh), oh, ol, ow)
            if ego_box.intersects(other_box):
                return True
    return False


def comfort_signals(poses: np.ndarray, speeds: np.ndarray, dt: float) -> dict[str, np.ndarray]:
    """Savitzky-Golay (poly 2) derivatives of a driven trajectory: poses [T, 3] world, speeds [T], step dt.

    Returns lon_accel, lat_accel (= v · yaw rate), jerk (magnitude of d/dt of (lon, lat) accel) and yaw_rate,
    each [T], with NAVSIM's windows (8 for accelerations, 15 for jerk, 5 for yaw rate; shrunk to fit short T).
    Sign of lat_accel/yaw_rate follows highway-env (positive = turning right); the bounds are symmetric.
    """
    n = len(speeds)
    if n < 3:
        zero = np.zeros(n)
        return {name: zero for name in HIGHWAY_COMFORT}
    deriv = lambda y, window: navsim_comfort.savgol_derivative(y, dt, window, 2, 1)
    yaw_rate = deriv(np.unwrap(np.asarray(poses)[:, 2]), 5)
    lon_accel = deriv(np.asarray(speeds, dtype=np.float64), 8)
    lat_accel = np.asarray(speeds) * yaw_rate
    jerk = np.hypot(deriv(lon_accel, 15), deriv(lat_accel, 15))
    return {"lon_accel": lon_accel, "lat_accel": lat_accel, "jerk": jerk, "yaw_rate": yaw_rate}


def comfort_ok(signals: dict[str, np.ndarray]) -> dict[str, bool]:
    """Per-signal pass/fail over the whole episode against NAVSIM's comfort bounds."""
    return {name: bool(navsim_comfort.within_bounds(signals[name], name)) for name in HIGHWAY_COMFORT}


def ego_progress(progress_m: float, expert_progress_m: float | None) -> float:
    """EP of one episode: NAVSIM's normalisation with the expert as the reference proposal (1 when neither
    moved more than 5 m, or when there is no reference)."""
    if expert_progress_m is None:
        return 1.0
    ep, _ = navsim.normalized_progress(np.array([max(progress_m, 0.0)]), np.ones(1), expert_progress_m)
    return float(ep[0])


def episode_scores(crashed: bool, off_road: bool, ttc_bad: bool, progress_m: float,
                   expert_progress_m: float | None, comfort_checks: dict[str, bool]) -> dict[str, float]:
    """{nc, dac, ttc, ep, comfort, pdms} of one episode."""
    nc, dac, ttc = float(not crashed), float(not off_road), float(not ttc_bad)
    c = float(all(comfort_checks.values()))
    ep = ego_progress(progress_m, expert_progress_m)
    return {"nc": nc, "dac": dac, "ttc": ttc, "ep": ep, "comfort": c,
            "pdms": navsim.pdms_aggregate(nc, dac, ttc, ep, c)}


def plan_ade(plan: np.ndarray, reference: np.ndarray) -> float:
    """Mean L2 (x, y) between one plan [N, 3] and the reference future [N, 3]."""
    return float(trajectory.ade(np.asarray(plan)[None, None], np.asarray(reference)[None])[0, 0, 0])
