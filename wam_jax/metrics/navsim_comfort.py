"""Comfort checks on simulated ego states (navsim `pdm_comfort_metrics.py`, nuPlan's comfort metrics).

Derivatives use Savitzky-Golay filters exactly as navsim does (including its window choices: accelerations are
smoothed with window 8 / poly 2; jerk is the window-15 / poly-2 derivative of the smoothed acceleration; yaw
rate and yaw acceleration are window-5 derivatives of the unwrapped heading, poly 2 and poly 3), and values are
rounded to 8 decimals before the strict bound tests.

states: [B, T, 11] (navsim StateIndex layout); time_s: [T] equally spaced.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
from scipy.signal import savgol_filter

from wam_jax.metrics.navsim_scene import AX, AY, HEADING, YAW_ACC, YAW_RATE, VehicleParams

# nuPlan comfort bounds
MAX_ABS_MAG_JERK = 8.37  # [m/s^3]
MAX_ABS_LAT_ACCEL = 4.89  # [m/s^2]
MAX_LON_ACCEL = 2.40  # [m/s^2]
MIN_LON_ACCEL = -4.05  # [m/s^2]
MAX_ABS_YAW_ACCEL = 1.93  # [rad/s^2]
MAX_ABS_LON_JERK = 4.13  # [m/s^3]
MAX_ABS_YAW_RATE = 0.95  # [rad/s]

# NAVSIM v2 extended comfort (RMS of differences between two consecutive plans)
EC_ACCELERATION = 0.7  # [m/s^2]
EC_JERK = 0.5  # [m/s^3]
EC_YAW_RATE = 0.1  # [rad/s]
EC_YAW_ACCEL = 0.1  # [rad/s^2]

COMFORT_NAMES = ("lon_accel", "lat_accel", "jerk", "lon_jerk", "yaw_accel", "yaw_rate")


def _center_acceleration(states: np.ndarray, vehicle: VehicleParams) -> np.ndarray:
    """Body-frame acceleration moved from the rear axle to the box center with nuPlan's rigid-body shift
    (`get_acceleration_shifted` with displacement (rear_axle_to_center, 0)). -> [B, T, 2]."""
    d = vehicle.rear_axle_to_center
    acc = states[..., AX:AY + 1].copy()
    acc[..., 0] += d * states[..., YAW_RATE] ** 2 + d * states[..., YAW_ACC]
    return acc


def _smoothed_acceleration(states: np.ndarray, coordinate: str, vehicle: VehicleParams) -> np.ndarray:
    n_time = states.shape[1]
    if coordinate == "x":
        acc = _center_acceleration(states, vehicle)[..., 0]
    elif coordinate == "y":
        acc = _center_acceleration(states, vehicle)[..., 1]
    elif coordinate == "magnitude":
        acc = np.hypot(states[..., AX], states[..., AY])
    else:
        raise ValueError(f"acceleration coordinate must be x, y or magnitude, got {coordinate!r}.")
    acc = savgol_filter(acc, polyorder=2, window_length=min(8, n_time), axis=-1)
    return np.round(acc, 8)


def savgol_derivative(y: np.ndarray, dt: float, window_length: int, poly_order: int, deriv: int) -> np.ndarray:
    """Savitzky-Golay derivative along the last axis of samples `dt` apart (the window shrinks to fit short y)."""
    window_length = min(window_length, np.shape(y)[-1])
    if not poly_order < window_length:
        raise ValueError(f"Savitzky-Golay needs poly order {poly_order} < window {window_length}.")
    return savgol_filter(y, polyorder=poly_order, window_length=window_length, deriv=deriv, delta=dt, axis=-1)


def _derivative(y: np.ndarray, time_s: np.ndarray, window_length: int, poly_order: int, deriv: int) -> np.ndarray:
    dx = np.diff(time_s)
    if not (dx > 0).all():
        raise ValueError("time points must be strictly increasing.")
    return savgol_derivative(y, dx.mean(), min(window_length, len(time_s)), poly_order, deriv)


def _jerk(states, coordinate, time_s, vehicle) -> np.ndarray:
    acc = _smoothed_acceleration(states, coordinate, vehicle)
    return np.round(_derivative(acc, time_s, 15, 2, 1), 8)


def _phase_unwrap(headings: np.ndarray) -> np.ndarray:
    adjustments = np.zeros_like(headings)
    adjustments[..., 1:] = np.cumsum(np.round(np.diff(headings, axis=-1) / (2 * np.pi)), axis=-1)
    return headings - 2 * np.pi * adjustments


def _yaw_derivative(states, time_s, deriv: int, poly_order: int) -> np.ndarray:
    # navsim passes no window to `_approximate_derivatives` here, so its default window of 5 applies.
    return np.round(_derivative(_phase_unwrap(states[..., HEADING]), time_s, 5, poly_order, deriv), 8)


# name -> (lo, hi): a signal passes when lo < value < hi at every step (strict, as nuPlan).
COMFORT_BOUNDS = {
    "lon_accel": (MIN_LON_ACCEL, MAX_LON_ACCEL),
    "lat_accel": (-MAX_ABS_LAT_ACCEL, MAX_ABS_LAT_ACCEL),
    "jerk": (-MAX_ABS_MAG_JERK, MAX_ABS_MAG_JERK),
    "lon_jerk": (-MAX_ABS_LON_JERK, MAX_ABS_LON_JERK),
    "yaw_accel": (-MAX_ABS_YAW_ACCEL, MAX_ABS_YAW_ACCEL),
    "yaw_rate": (-MAX_ABS_YAW_RATE, MAX_ABS_YAW_RATE),
}


def within_bounds(values: np.ndarray, name: str) -> np.ndarray:
    """Whether signal `name` stays inside its comfort bounds over the last axis. -> bool [...]."""
    lo, hi = COMFORT_BOUNDS[name]
    return np.all((values > lo) & (values < hi), axis=-1)


def comfort_checks(states: np.ndarray, time_s: np.ndarray, vehicle: VehicleParams = VehicleParams()) -> np.ndarray:
    """The six nuPlan comfort tests. -> bool [B, 6] in `COMFORT_NAMES` order."""
    states = np.asarray(states, dtype=np.float64)
    time_s = np.asarray(time_s, dtype=np.float64)
    if states.ndim != 3 or states.shape[1] != len(time_s):
        raise ValueError(f"states must be [B, T, 11] with T == len(time_s); got {states.shape}, {len(time_s)}.")
    signals = {
        "lon_accel": _smoothed_acceleration(states, "x", vehicle),
        "lat_accel": _smoothed_acceleration(states, "y", vehicle),
        "jerk": _jerk(states, "magnitude", time_s, vehicle),
        "lon_jerk": _jerk(states, "x", time_s, vehicle),
        "yaw_accel": _yaw_derivative(states, time_s, 2, 3),
        "yaw_rate": _yaw_derivative(states, time_s, 1, 2),
    }
    return np.stack([within_bounds(signals[name], name) for name in COMFORT_NAMES], axis=-1)


def is_comfortable(states: np.ndarray, time_s: np.ndarray, vehicle: VehicleParams = VehicleParams()) -> np.ndarray:
    """All six comfort tests hold. -> bool [B]."""
    return comfort_checks(states, time_s, vehicle).all(axis=-1)


def extended_comfort_features(states: np.ndarray, time_s: np.ndarray,
                              vehicle: VehicleParams = VehicleParams()) -> Dict[str, np.ndarray]:
    return {
        "acceleration": _smoothed_acceleration(states, "magnitude", vehicle),
        "jerk": _jerk(states, "magnitude", time_s, vehicle),
        "yaw_rate": _yaw_derivative(states, time_s, 1, 2),
        "yaw_accel": _yaw_derivative(states, time_s, 2, 2),
    }


def two_frame_extended_comfort(states_1: np.ndarray, states_2: np.ndarray, time_s: np.ndarray,
                               vehicle: VehicleParams = VehicleParams()) -> np.ndarray:
    """NAVSIM v2 EC: RMS of feature differences between two aligned state sequences within thresholds.

    states_1, states_2: [B, T, 11] covering the same absolute times. -> bool [B].
    """
    if states_1.shape != states_2.shape:
        raise ValueError(f"both trajectories must have the same shape, got {states_1.shape} vs {states_2.shape}.")
    f1 = extended_comfort_features(states_1, time_s, vehicle)
    f2 = extended_comfort_features(states_2, time_s, vehicle)
    rms = {k: np.sqrt(np.mean((f1[k] - f2[k]) ** 2, axis=-1)) for k in f1}
    return ((rms["acceleration"] <= EC_ACCELERATION) & (rms["jerk"] <= EC_JERK)
            & (rms["yaw_rate"] <= EC_YAW_RATE) & (rms["yaw_accel"] <= EC_YAW_ACCEL))
