"""Actions as the paper represents them: per-step ego-frame translation and yaw increments, normalised.

Waypoints of a chunk are poses p_1..p_K = (x, y, yaw) in the ego frame at the chunk start (x forward, y left,
p_0 = origin). Increment i is p_i seen from p_{i-1}:

    (dx_i, dy_i) = R(−yaw_{i−1}) · (xy_i − xy_{i−1}),    dyaw_i = wrap(yaw_i − yaw_{i−1})

so a car driving straight at constant speed has the same increment every step, whatever its heading.
`waypoints_to_increments` and `increments_to_waypoints` are exact inverses (float64 inside);
`ActionNorm` normalises either representation and always takes and returns waypoints.
"""

from __future__ import annotations

import numpy as np

REPRESENTATIONS = ("increments", "waypoints")


def _wrap(a):
    return (a + np.pi) % (2.0 * np.pi) - np.pi


def waypoints_to_increments(waypoints) -> np.ndarray:
    """[..., K, 3] chunk-start-frame poses → [..., K, 3] per-step increments (each in the previous pose's frame)."""
    p = np.asarray(waypoints, np.float64)
    if p.ndim < 2 or p.shape[-1] != 3:
        raise ValueError(f"waypoints must be [..., K, 3] (x, y, yaw), got shape {p.shape}")
    prev = np.concatenate([np.zeros_like(p[..., :1, :]), p[..., :-1, :]], axis=-2)
    d = p[..., :2] - prev[..., :2]
    c, s = np.cos(prev[..., 2]), np.sin(prev[..., 2])
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1],
                     _wrap(p[..., 2] - prev[..., 2])], axis=-1)


def increments_to_waypoints(increments) -> np.ndarray:
    """Inverse of `waypoints_to_increments`: composes the increments from the origin. [..., K, 3] → [..., K, 3]
    (yaw unwrapped: the sum of the yaw increments)."""
    d = np.asarray(increments, np.float64)
    if d.ndim < 2 or d.shape[-1] != 3:
        raise ValueError(f"increments must be [..., K, 3] (dx, dy, dyaw), got shape {d.shape}")
    yaw = np.cumsum(d[..., 2], axis=-1)
    prev_yaw = yaw - d[..., 2]
    c, s = np.cos(prev_yaw), np.sin(prev_yaw)
    xy = np.cumsum(np.stack([c * d[..., 0] - s * d[..., 1], s * d[..., 0] + c * d[..., 1]], -1), axis=-2)
    return np.concatenate([xy, yaw[..., None]], axis=-1)


class ActionNorm:
    """Affine normalisation of the action representation to ~unit scale. representation: `increments` (the
    paper's) or `waypoints` (older runs). mean/std are [A] (per dimension) or [K, A] (per step and dimension).
    `normalize` takes waypoints [..., K, 3], `denormalize` returns waypoints."""

    def __init__(self, mean, std, representation: str = "waypoints"):
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        if self.mean.shape != self.std.shape or self.mean.ndim not in (1, 2):
            raise ValueError(f"action_norm mean {self.mean.shape} and std {self.std.shape} must both be [A] or [K, A]")
        if np.any(self.std <= 0):
            raise ValueError("action_norm std must be positive")
        if representation not in REPRESENTATIONS:
            raise ValueError(f"action_norm.representation={representation!r} unknown; choose one of "
                             f"{REPRESENTATIONS}")
        self.representation = representation

    @classmethod
    def from_config(cls, section) -> "ActionNorm":
        """From an experiment config's `action_norm` section (mean, std, optional representation)."""
        return cls(section["mean"], section["std"], section.get("representation", "waypoints"))

    def encode(self, waypoints) -> np.ndarray:
        """Waypoints → the (unnormalised) representation."""
        if self.representation == "increments":
            return waypoints_to_increments(waypoints).astype(np.float32)
        return np.asarray(waypoints, np.float32)

    def decode(self, values) -> np.ndarray:
        if self.representation == "increments":
            return increments_to_waypoints(values).astype(np.float32)
        return np.asarray(values, np.float32)

    @classmethod
    def fit(cls, waypoints, per_waypoint: bool = True, min_std: float = 1e-2,
            representation: str = "waypoints") -> "ActionNorm":
        """Statistics of waypoints [..., K, A] (e.g. a dataset sample) in the chosen representation."""
        values = cls([0.0], [1.0], representation).encode(waypoints)
        flat = np.asarray(values, np.float64).reshape(-1, *np.shape(values)[-2:])
        axes = (0,) if per_waypoint else (0, 1)
        return cls(flat.mean(axes), np.maximum(flat.std(axes), min_std), representation)

    def to_config(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "representation": self.representation}

    def normalize(self, waypoints):
        return (self.encode(waypoints) - self.mean) / self.std

    def denormalize(self, actions):
        return self.decode(np.asarray(actions) * self.std + self.mean)
