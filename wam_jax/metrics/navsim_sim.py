"""Plan -> 41 reference poses -> LQR tracker + kinematic bicycle at 0.1 s (NAVSIM's `PDMSimulator`).

Follows `navsim/evaluate/pdm_score.py` (plan to global, prepend current pose, interpolate), and
`pdm_planner/simulation/{batch_lqr.py, batch_lqr_utils.py, batch_kinematic_bicycle.py, pdm_simulator.py}`
with their default parameters. Everything is batched over proposals with numpy.

Shapes: plans `[8, 3]` local (x, y, heading of the rear axle at t = 0.5 ... 4.0 s); reference poses
`[P, 41, 3]` global; simulated states `[P, 41, 11]` (navsim StateIndex layout, see `navsim_scene`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from wam_jax.metrics.navsim_scene import (
    AX, AY, HEADING, STATE_SIZE, STEERING, STEERING_RATE, VX, VY, X, Y, YAW_ACC, YAW_RATE,
    EgoState, VehicleParams, normalize_angle,
)

DT = 0.1  # proposal_sampling.interval_length
NUM_POSES = 40  # proposal_sampling.num_poses (41 states incl. the current one)
PLAN_DT = 0.5  # NAVSIM Trajectory: 8 poses at 0.5 s


# --- plan -> global reference poses --------------------------------------------------------------------------


def relative_to_absolute(origin: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Local poses `[..., 3]` in the frame of `origin` `[3]` (x, y, heading) -> global poses `[..., 3]`."""
    poses = np.asarray(poses, dtype=np.float64)
    c, s = np.cos(origin[2]), np.sin(origin[2])
    x = origin[0] + c * poses[..., 0] - s * poses[..., 1]
    y = origin[1] + s * poses[..., 0] + c * poses[..., 1]
    h = normalize_angle(origin[2] + poses[..., 2])
    return np.stack([x, y, h], axis=-1)


def interpolate_poses(times: np.ndarray, poses: np.ndarray, query_times: np.ndarray) -> np.ndarray:
    """Linear in x, y; angle-aware (unwrap, interpolate, wrap) in heading, like nuPlan's InterpolatedTrajectory.

    times: [N] increasing; poses: [N, 3]; query_times: [M] (clipped to [times[0], times[-1]]) -> [M, 3].
    """
    q = np.clip(query_times, times[0], times[-1])
    heading = np.unwrap(poses[:, 2])
    out = np.stack(
        [np.interp(q, times, poses[:, 0]), np.interp(q, times, poses[:, 1]), np.interp(q, times, heading)],
        axis=-1,
    )
    out[:, 2] = normalize_angle(out[:, 2])
    return out


def plan_to_reference_poses(ego: EgoState, plan, plan_dt: float = PLAN_DT, dt: float = DT,
                            num_poses: int = NUM_POSES) -> np.ndarray:
    """Agent plan `[T, 3]` (rear-axle local frame, t = plan_dt ... T*plan_dt) -> `[num_poses + 1, 3]` global poses
    at `dt`, with the current ego pose prepended at t = 0 (navsim `transform_trajectory` +
    `get_trajectory_as_array`)."""
    plan = np.asarray(plan, dtype=np.float64)
    if plan.ndim != 2 or plan.shape[1] != 3:
        raise ValueError(f"plan must be [T, 3] (x, y, heading in the ego rear-axle frame), got {plan.shape}.")
    if not np.all(np.isfinite(plan)):
        raise ValueError("plan contains NaN/inf.")
    absolute = relative_to_absolute(ego.pose, plan)
    times = np.arange(len(plan) + 1, dtype=np.float64) * plan_dt
    poses = np.concatenate([ego.pose[None], absolute], axis=0)
    return interpolate_poses(times, poses, np.arange(num_poses + 1, dtype=np.float64) * dt)


# --- LQR tracker (batch_lqr.py / batch_lqr_utils.py) ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrackerParams:
    q_longitudinal: float = 10.0
    r_longitudinal: float = 1.0
    q_lateral: tuple = (1.0, 10.0, 0.0)
    r_lateral: float = 1.0
    tracking_horizon: int = 10
    jerk_penalty: float = 1e-4
    curvature_rate_penalty: float = 1e-2
    stopping_proportional_gain: float = 0.5
    stopping_velocity: float = 0.2


@dataclasses.dataclass(frozen=True)
class BicycleParams:
    max_steering_angle: float = np.pi / 3
    accel_time_constant: float = 0.2
    steering_angle_time_constant: float = 0.05


def _profile(initial: np.ndarray, derivatives: np.ndarray, dt: float) -> np.ndarray:
    """Integrate derivatives [B, M] from initial [B] -> profile [B, M + 1]."""
    cumsum = np.cumsum(derivatives * dt, axis=-1)
    return initial[:, None] + np.pad(cumsum, [(0, 0), (1, 0)])


def _fit_velocity(xy_disp: np.ndarray, headings: np.ndarray, dt: float, jerk_penalty: float):
    """Least squares for initial velocity + accelerations from displacements (jerk-regularised).

    xy_disp: [B, M, 2]; headings: [B, M] -> (v0 [B], accel [B, M - 1]).
    """
    b, m, _ = xy_disp.shape
    y = xy_disp.reshape(b, 2 * m)
    col = np.zeros((b, 2 * m))
    col[:, 0::2] = np.cos(headings)
    col[:, 1::2] = np.sin(headings)
    a = np.repeat(col[..., None] * dt**2, m, axis=2)
    a[..., 0] = col * dt
    mask = np.repeat(np.triu(np.ones((m, m), dtype=bool), k=1), 2, axis=0)
    a[:, mask] = 0.0
    band = np.zeros((m - 2, m - 1))
    eye = np.eye(m - 2)
    band[:, 1:] += eye
    band[:, :-1] -= eye
    r = np.concatenate([np.zeros((m - 2, 1)), band], axis=1)
    at = a.transpose(0, 2, 1)
    sol = np.linalg.pinv(at @ a + jerk_penalty * (r.T @ r)[None]) @ at
    x = np.einsum("bij,bj->bi", sol, y)
    return x[:, 0], x[:, 1:]


def _fit_curvature(heading_disp: np.ndarray, velocity: np.ndarray, dt: float, penalty: float,
                   initial_penalty: float = 1e-10):
    """Least squares for initial curvature + curvature rates. heading_disp, velocity: [B, M]."""
    b, m = heading_disp.shape
    a = np.repeat(np.tri(m)[None], b, axis=0)
    a[:, :, 0] = velocity * dt
    a[:, 1:, 1:] *= (velocity[:, 1:] * dt**2)[:, :, None]
    q = penalty * np.eye(m)
    q[0, 0] = initial_penalty
    at = a.transpose(0, 2, 1)
    sol = np.linalg.pinv(at @ a + q[None]) @ at
    x = np.einsum("bij,bj->bi", sol, heading_disp)
    return x[:, 0], x[:, 1:]


def velocity_curvature_profiles(poses: np.ndarray, dt: float, jerk_penalty: float, curvature_rate_penalty: float):
    """poses [B, N, 3] -> velocity [B, N - 1], curvature [B, N - 1] (navsim
    `get_velocity_curvature_profiles_with_derivatives_from_poses`)."""
    diff = np.diff(poses, axis=1)
    xy_disp = diff[..., :2]
    heading_disp = normalize_angle(diff[..., 2])
    v0, accel = _fit_velocity(xy_disp, poses[:, :-1, 2], dt, jerk_penalty)
    velocity = _profile(v0, accel, dt)
    k0, krate = _fit_curvature(heading_disp, velocity, dt, curvature_rate_penalty)
    curvature = _profile(k0, krate, dt)
    return velocity, curvature


class BatchLQRTracker:
    """Decoupled longitudinal (velocity) and lateral (lateral error, heading error, steering) one-step LQR."""

    def __init__(self, reference_poses: np.ndarray, vehicle: VehicleParams, dt: float = DT,
                 params: TrackerParams = TrackerParams()):
        self.ref = reference_poses  # [B, N, 3]
        self.dt = dt
        self.p = params
        self.wheel_base = vehicle.wheel_base
        self.velocity, self.curvature = velocity_curvature_profiles(
            reference_poses, dt, params.jerk_penalty, params.curvature_rate_penalty)

    def commands(self, index: int, states: np.ndarray):
        """Commands (acceleration [B], steering rate [B]) at iteration `index` from current states [B, 11]."""
        p, dt, h = self.p, self.dt, self.p.tracking_horizon
        ref_pose = self.ref[:, index]
        dx = states[:, X] - ref_pose[:, 0]
        dy = states[:, Y] - ref_pose[:, 1]
        lateral_error = -dx * np.sin(ref_pose[:, 2]) + dy * np.cos(ref_pose[:, 2])
        heading_error = normalize_angle(states[:, HEADING] - ref_pose[:, 2])
        v0 = states[:, VX]
        lat_state = np.stack([lateral_error, heading_error, states[:, STEERING]], axis=-1)

        n_profile = self.velocity.shape[1]
        ref_idx = min(index + h, n_profile - 1)
        ref_v = self.velocity[:, ref_idx]
        curv = np.zeros((len(states), h))
        length = ref_idx - index
        curv[:, :length] = self.curvature[:, index:ref_idx]
        if length < h:
            curv[:, length:] = self.curvature[:, ref_idx, None]

        accel = np.zeros(len(states))
        steer_rate = np.zeros(len(states))
        stop = (ref_v <= p.stopping_velocity) & (v0 <= p.stopping_velocity)
        accel[stop] = -p.stopping_proportional_gain * (v0[stop] - ref_v[stop])
        go = ~stop
        if np.any(go):
            b_lon = h * dt
            err = v0[go] - ref_v[go]
            accel[go] = -1.0 / (b_lon * p.q_longitudinal * b_lon + p.r_longitudinal) * b_lon * p.q_longitudinal * err
            vel_prof = _profile(v0[go], np.repeat(accel[go, None], h, axis=-1), dt)[:, :h]
            steer_rate[go] = self._lateral(lat_state[go], vel_prof, curv[go])
        return accel, steer_rate

    def _lateral(self, x0: np.ndarray, velocity: np.ndarray, curvature: np.ndarray) -> np.ndarray:
        """Steering rate minimising the lateral state after `tracking_horizon` Euler steps. [B, 3] -> [B]."""
        b, dt, h = len(x0), self.dt, self.p.tracking_horizon
        eye = np.eye(3)
        step = np.tile(eye[None, None], (h, b, 1, 1))
        step[:, :, 0, 1] = velocity.T * dt
        step[:, :, 1, 2] = velocity.T * dt / self.wheel_base
        affine = np.zeros((h, b, 3))
        affine[:, :, 1] = -velocity.T * curvature.T * dt
        in_mat = np.array([0.0, 0.0, dt])
        a = np.tile(eye[None], (b, 1, 1))
        bb = np.zeros((b, 3))
        g = np.zeros((b, 3))
        for k in range(h):
            a = step[k] @ a
            bb = np.einsum("bij,bj->bi", step[k], bb) + in_mat
            g = np.einsum("bij,bj->bi", step[k], g) + affine[k]
        err = np.einsum("bij,bj->bi", a, x0) + g
        err[:, 1:] = normalize_angle(err[:, 1:])
        q = np.diag(self.p.q_lateral)
        btq = bb @ q  # [B, 3]
        inv = -1.0 / (np.sum(btq * bb, axis=-1) + self.p.r_lateral)
        return inv * np.sum(btq * err, axis=-1)


def propagate(states: np.ndarray, accel_cmd: np.ndarray, steer_rate_cmd: np.ndarray, vehicle: VehicleParams,
              dt: float = DT, params: BicycleParams = BicycleParams()) -> np.ndarray:
    """One Euler step of the kinematic bicycle (rear-axle reference) with first-order actuator lag. [B, 11]."""
    accel = states[:, AX]
    steer = states[:, STEERING]
    ideal_steer = dt * steer_rate_cmd + steer
    new_accel = dt / (dt + params.accel_time_constant) * (accel_cmd - accel) + accel
    new_steer = dt / (dt + params.steering_angle_time_constant) * (ideal_steer - steer) + steer
    new_steer_rate = (new_steer - steer) / dt

    v = states[:, VX]
    out = states.copy()
    out[:, X] = states[:, X] + v * np.cos(states[:, HEADING]) * dt
    out[:, Y] = states[:, Y] + v * np.sin(states[:, HEADING]) * dt
    out[:, HEADING] = normalize_angle(states[:, HEADING] + v * np.tan(steer) / vehicle.wheel_base * dt)
    out[:, VX] = v + new_accel * dt
    out[:, VY] = 0.0  # no lateral velocity in the kinematic bicycle
    out[:, STEERING] = np.clip(steer + new_steer_rate * dt, -params.max_steering_angle, params.max_steering_angle)
    out[:, YAW_RATE] = out[:, VX] * np.tan(out[:, STEERING]) / vehicle.wheel_base
    out[:, AX] = new_accel
    out[:, AY] = 0.0
    out[:, YAW_ACC] = (out[:, YAW_RATE] - states[:, YAW_RATE]) / dt
    out[:, STEERING_RATE] = new_steer_rate
    return out


def simulate(reference_poses: np.ndarray, ego: EgoState, vehicle: VehicleParams = VehicleParams(),
             dt: float = DT) -> np.ndarray:
    """Track reference poses [P, N, 3] from the current ego state -> simulated states [P, N, 11]."""
    ref = np.asarray(reference_poses, dtype=np.float64)
    if ref.ndim == 2:
        ref = ref[None]
    if ref.ndim != 3 or ref.shape[-1] != 3 or ref.shape[1] < 4:
        raise ValueError(f"reference poses must be [P, N>=4, 3], got {ref.shape}.")
    tracker = BatchLQRTracker(ref, vehicle, dt)
    out = np.zeros(ref.shape[:2] + (STATE_SIZE,))
    out[:, 0] = ego.as_array()
    for t in range(1, ref.shape[1]):
        accel, steer_rate = tracker.commands(t - 1, out[:, t - 1])
        out[:, t] = propagate(out[:, t - 1], accel, steer_rate, vehicle, dt)
    return out


def simulate_plan(ego: EgoState, plan, vehicle: VehicleParams = VehicleParams()) -> np.ndarray:
    """Convenience: 8x3 local plan -> simulated states [41, 11]."""
    return simulate(plan_to_reference_poses(ego, plan)[None], ego, vehicle)[0]
