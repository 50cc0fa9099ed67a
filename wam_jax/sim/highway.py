"""highway-env: the one module that knows the simulator.

Everything else in wam-jax talks to highway-env through the functions here: building a seeded env with an
ego-centred RGB camera, the built-in IDM + MOBIL expert, state readers, ego-frame waypoints, scene-rule intents
and a waypoint-tracking controller.

Frames and sign conventions
---------------------------
* **World frame** = highway-env's own frame: x along the road, **y pointing to the right of the direction of
  travel** (screen y points down; lane 0 is the left-most lane, lane ids grow to the right), heading measured
  from +x towards +y (so a positive heading rate turns right). Poses in this module are `[x, y, heading]` in
  this frame unless the name says `ego`.
* **Ego frame** (what planners, the model and the datasets see; NAVSIM convention): origin at the ego centre at
  the chunk start, **x forward, y left**, heading counter-clockwise positive (left turn > 0). Converting from
  the world frame is a rotation by the ego heading followed by a mirror of y; see `ego_frame_waypoints`.

The expert
----------
The ego is a `ExpertEgoVehicle`, a subclass of highway-env's `IDMVehicle` installed in place of the plain
`Vehicle` that `ContinuousAction` creates. It obeys whatever continuous action the env receives, like the
original ego. `expert_action(env)` runs the unmodified `IDMVehicle` decision code on it -- IDM for the
longitudinal acceleration, MOBIL for lane changes (every `LANE_CHANGE_DELAY` s), highway-env's cascaded
lateral/heading controller for steering, with gentler gains set from the config -- and returns that command as a normalised `ContinuousAction` in
[-1, 1]^2. So the expert drives through exactly the same action interface as any planner, and its actions can
be recorded as data.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

import highway_env  # noqa: F401  (registers the env ids)
from highway_env.vehicle.behavior import IDMVehicle
from highway_env.vehicle.kinematics import Vehicle

from wam_jax.sim import fast_road

fast_road.install()   # the same physics, 2x faster (exact; see fast_road.py)

INTENTS = ("keep lane", "change lane left", "change lane right", "slow down")
"""The four driving commands, in a fixed order (index = class id)."""

VEHICLE_COLUMNS = ("x", "y", "heading", "speed", "length", "width")
"""Columns of `other_vehicles` rows (world frame)."""

_EGO_GREEN = (50, 200, 0)
_CRASH_RED = (255, 100, 100)


# ----------------------------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True)
class HighwaySimConfig:
    """Simulator, camera and chunking settings. Times in seconds, rates in Hz, lengths in metres."""

    env_id: str = "highway-v0"
    lanes: int = 4
    vehicles: int = 30  # other vehicles spawned around the ego
    density: float = 1.0  # highway-env "vehicles_density"
    sim_hz: int = 10  # physics steps per second
    control_hz: int = 10  # actions per second (one env.step)
    duration_s: float = 40.0  # env truncates the episode after this
    frame_hz: float = 5.0  # recorded camera frames per second; must divide control_hz
    image_size: tuple[int, int] = (64, 64)  # (H, W) of frames returned by render_frame
    scaling: float = 1.5  # pixels per metre in the returned frame
    centering: tuple[float, float] = (0.3, 0.5)  # ego position in the frame, fraction of (W, H); 0.3 looks ahead
    supersample: int = 4  # render at this multiple of image_size, then box-filter down (anti-aliasing)
    chunk_s: float = 4.0  # one planning chunk
    waypoints_per_chunk: int = 8
    waypoint_hz: float = 2.0  # 8 waypoints at 2 Hz = 4 s, NAVSIM-style
    seed: int = 0  # base seed; episode i of a run uses seed + i
    expert_target_speed: float = 30.0  # m/s the IDM expert tries to keep (lane speed limit is 30)
    # The expert's controller is smoother than highway-env's NPC defaults (0.6 s, 0.2 s, 3 m/s^2), whose lane
    # changes break NAVSIM's lateral-acceleration and jerk bounds; with these the demonstrations are comfortable.
    expert_tau_lateral: float = 1.5  # [s] lateral position time constant (lane changes take ~3-4 s)
    expert_tau_heading: float = 0.5  # [s] heading time constant
    expert_comfort_acc: float = 2.0  # [m/s^2] IDM's desired maximum acceleration (NAVSIM bound: 2.4)
    max_acceleration: float = 5.0  # |a| that the normalised action 1.0 maps to [m/s^2]
    max_steering: float = math.pi / 4  # |steering| that the normalised action 1.0 maps to [rad]
    kinematics_obs: bool = False  # gym obs = highway-env's Kinematics table (pandas, ~40% of a step); else {"time"}
    # Rotate frames so the ego always points right, like a camera mounted on the car: the image is then in the
    # same frame as the ego-frame waypoints, and a heading off the lane direction shows as tilted lane lines.
    heading_up: bool = False
    # With heading_up, the scene is rendered with a margin around the frame (`render_pad`) wide enough for a tilt
    # up to this many degrees, so that rotating it never pulls the border into the frame: a wide, short frame
    # (e.g. 32 x 128) tilted by 10 degrees reaches 19 px above and below itself at its far end.
    rotation_margin_deg: float = 20.0
    # Recorded demonstrations only (noise injection, as in DART): steering bursts push the ego off the lane
    # centre so the data shows the expert recovering; a planner trained on perfectly centred driving never sees
    # how to come back. Off (0) by default and never used in evaluation.
    perturb_steering: float = 0.0  # max |normalised steering| added during a burst
    perturb_rate_hz: float = 0.0  # bursts start at this rate (Poisson)
    perturb_s: float = 0.6  # burst length
    # > 0: bursts may start only in the last `perturb_window_s` seconds of each `chunk_s` chunk (counted from the
    # episode start). A chunk's recorded future is then clean except near its own end, while the chunk before it
    # ends pushed off the lane: the pair shows the recovery without teaching random swerves. 0: anywhere.
    perturb_window_s: float = 0.0
    # One recovery burst per recorded episode: a steering offset of random sign and a magnitude drawn from
    # [recovery_steering / 2, recovery_steering], held for `perturb_s` and ending `recovery_lead_s` before the end
    # of the first chunk. The first chunk then ends pushed off the lane (its last frames show the tilt), and the
    # chunks after it are the expert's own recovery: clean labels, unlike bursts that may fall inside a target.
    recovery_steering: float = 0.0
    recovery_lead_s: float = 0.4

    def __post_init__(self):
        def need(cond: bool, msg: str):
            if not cond:
                raise ValueError(f"HighwaySimConfig: {msg}")

        need(self.sim_hz % self.control_hz == 0, f"sim_hz={self.sim_hz} must be a multiple of control_hz={self.control_hz}")
        for name in ("frame_hz", "waypoint_hz"):
            ratio = self.control_hz / getattr(self, name)
            need(abs(ratio - round(ratio)) < 1e-9 and round(ratio) >= 1,
                 f"{name}={getattr(self, name)} must divide control_hz={self.control_hz} (e.g. 10, 5, 2, 1)")
        need(abs(self.chunk_s * self.waypoint_hz - self.waypoints_per_chunk) < 1e-9,
             f"waypoints_per_chunk={self.waypoints_per_chunk} must equal chunk_s*waypoint_hz={self.chunk_s * self.waypoint_hz}")
        need(len(self.image_size) == 2 and min(self.image_size) > 0, f"image_size={self.image_size} must be (H, W)")
        need(self.supersample >= 1, "supersample must be >= 1")
        need(0.0 <= self.rotation_margin_deg < 90.0,
             f"rotation_margin_deg={self.rotation_margin_deg} must lie in [0, 90)")
        need(0.0 <= self.perturb_window_s <= self.chunk_s,
             f"perturb_window_s={self.perturb_window_s} must lie in [0, chunk_s={self.chunk_s}]")
        need(self.recovery_steering >= 0.0 and 0.0 <= self.recovery_lead_s
             and self.recovery_lead_s + self.perturb_s <= self.chunk_s,
             f"recovery_steering={self.recovery_steering} must be >= 0 and recovery_lead_s + perturb_s="
             f"{self.recovery_lead_s + self.perturb_s} must lie in [0, chunk_s={self.chunk_s}]")

    @property
    def dt(self) -> float:
        """Seconds per control step (one env.step)."""
        return 1.0 / self.control_hz

    @property
    def steps_per_frame(self) -> int:
        return int(round(self.control_hz / self.frame_hz))

    @property
    def steps_per_waypoint(self) -> int:
        return int(round(self.control_hz / self.waypoint_hz))

    @property
    def steps_per_chunk(self) -> int:
        return self.steps_per_waypoint * self.waypoints_per_chunk

    @property
    def render_pad(self) -> tuple[int, int]:
        """(rows, cols) rendered beyond the frame on each side before a heading-up rotation (0, 0 without one):
        enough that every frame pixel rotated by up to `rotation_margin_deg` about the ego lands in the render."""
        if not self.heading_up:
            return 0, 0
        h, w = self.image_size
        a = math.radians(self.rotation_margin_deg)
        cx, cy = self.centering[0] * w, self.centering[1] * h
        corners = np.array([(x, y) for x in (-cx, w - cx) for y in (-cy, h - cy)])
        c, s = math.cos(a), math.sin(a)
        src = np.concatenate([corners @ np.array([[c, sg * s], [-sg * s, c]]) for sg in (-1, 1)])
        # Per side: how far the rotated frame reaches past the render's extent on that side; pad by the worst.
        cols = max(0.0, -src[:, 0].min() - cx, src[:, 0].max() - (w - cx))
        rows = max(0.0, -src[:, 1].min() - cy, src[:, 1].max() - (h - cy))
        rows, cols = math.ceil(rows), math.ceil(cols)
        return rows, cols

    @property
    def waypoint_times(self) -> np.ndarray:
        """[N] seconds after the chunk start of each waypoint (0.5, 1.0, ..., 4.0 by default)."""
        return (np.arange(self.waypoints_per_chunk) + 1) / self.waypoint_hz


# ----------------------------------------------------------------------------------------------------------------
# The ego vehicle and the env


class ExpertEgoVehicle(IDMVehicle):
    """The ego: follows external continuous actions, and can compute highway-env's IDM + MOBIL command.

    `act(dict)` stores an external {acceleration, steering} command exactly like the plain `Vehicle`;
    `act(None)` (what `Road.act()` calls every physics step) keeps the last command. `expert_command()` runs
    `IDMVehicle.act` (IDM longitudinal + MOBIL lane change + lane-following steering) and returns its command.
    When the ego has been driven by someone else since the expert last ran, the expert first re-targets the lane
    the ego is in, so it never steers back to a stale lane-change target.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._expert_driving = True  # the last external command came from expert_command()
        self._expert_pending = False  # expert_command() ran and its command has not been applied yet

    @property
    def color(self):  # read by highway-env's VehicleGraphics: green ego, red once crashed
        return _CRASH_RED if self.crashed else _EGO_GREEN

    def act(self, action: dict | str | None = None) -> None:
        if action:
            if not self._expert_pending:
                self._expert_driving = False
            self._expert_pending = False
            Vehicle.act(self, action)

    def expert_command(self) -> dict:
        """IDM + MOBIL command {acceleration [m/s^2], steering [rad]} for the current state (updates MOBIL state)."""
        if not self._expert_driving:
            self.target_lane_index = self.lane_index
            self._expert_driving = True
        if self.crashed:
            command = {"acceleration": -self.speed, "steering": 0.0}
        else:
            saved = self.action
            IDMVehicle.act(self)  # sets self.action through Vehicle.act
            command = {k: float(v) for k, v in self.action.items()}
            self.action = saved
        self._expert_pending = True
        return command


class _InstallExpertEgo(gym.Wrapper):
    """After every reset, replaces the env's plain ego `Vehicle` with an `ExpertEgoVehicle` at the same state."""

    def __init__(self, env: gym.Env, cfg: HighwaySimConfig):
        super().__init__(env)
        self._cfg = cfg
        self._install()

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._install()
        return obs, info

    def _install(self):
        u = self.env.unwrapped
        old = u.vehicle
        if old is None or isinstance(old, ExpertEgoVehicle):
            return
        cfg = self._cfg
        ego = ExpertEgoVehicle(u.road, np.array(old.position, dtype=float), old.heading, old.speed,
                               target_speed=cfg.expert_target_speed)
        ego.KP_LATERAL = 1.0 / cfg.expert_tau_lateral  # instance attributes shadow IDMVehicle's class constants
        ego.KP_HEADING = 1.0 / cfg.expert_tau_heading
        ego.COMFORT_ACC_MAX = cfg.expert_comfort_acc
        u.road.vehicles[u.road.vehicles.index(old)] = ego
        u.controlled_vehicles[0] = ego


def env_config(cfg: HighwaySimConfig) -> dict:
    """The highway-env config dict `make_env` passes to gym.make."""
    h, w = cfg.image_size
    pad_r, pad_c = cfg.render_pad
    observation = {"type": "Kinematics"} if cfg.kinematics_obs else {"type": "AttributesObservation",
                                                                       "attributes": ["time"]}
    return {
        "observation": observation,
        "action": {
            "type": "ContinuousAction",
            "acceleration_range": (-cfg.max_acceleration, cfg.max_acceleration),
            "steering_range": (-cfg.max_steering, cfg.max_steering),
        },
        "lanes_count": cfg.lanes,
        "vehicles_count": cfg.vehicles,
        "vehicles_density": cfg.density,
        "simulation_frequency": cfg.sim_hz,
        "policy_frequency": cfg.control_hz,
        "duration": cfg.duration_s,
        "screen_width": (w + 2 * pad_c) * cfg.supersample,
        "screen_height": (h + 2 * pad_r) * cfg.supersample,
        "scaling": cfg.scaling * cfg.supersample,
        # The ego sits at the same pixel of the frame whatever the render pad around it.
        "centering_position": [(cfg.centering[0] * w + pad_c) / (w + 2 * pad_c),
                               (cfg.centering[1] * h + pad_r) / (h + 2 * pad_r)],
        "offscreen_rendering": True,
        "show_trajectories": False,
    }


def make_env(cfg: HighwaySimConfig, seed: int) -> gym.Env:
    """A seeded highway-env (render_mode="rgb_array", ContinuousAction, expert ego), already reset with `seed`.

    The gym observation is not used by wam-jax (read the state with `ego_state`, `other_vehicles`, frames with
    `render_frame`); unless `cfg.kinematics_obs` it is a cheap {"time": t} dict.
    The same `cfg` and `seed` give the same scene, and the same actions then give the same states and frames.
    Use `reset_env(env, seed)` to start another episode on the same env.
    """
    # The env checker would warn on every step about the {"time"} observation; our readers replace observations.
    env = gym.make(cfg.env_id, render_mode="rgb_array", config=env_config(cfg), disable_env_checker=True)
    env = _InstallExpertEgo(env, cfg)
    env.reset(seed=int(seed))
    return env


def reset_env(env: gym.Env, seed: int):
    """Starts a new episode with `seed`; returns (obs, info) like gymnasium."""
    return env.reset(seed=int(seed))


def _u(env):
    return env.unwrapped if hasattr(env, "unwrapped") else env


# ----------------------------------------------------------------------------------------------------------------
# Expert


def command_to_action(command: dict, cfg: HighwaySimConfig) -> np.ndarray:
    """{acceleration [m/s^2], steering [rad]} -> normalised ContinuousAction [2] in [-1, 1] (clamped)."""
    return np.clip(np.array([command["acceleration"] / cfg.max_acceleration,
                             command["steering"] / cfg.max_steering], dtype=np.float32), -1.0, 1.0)


def action_to_command(action: np.ndarray, cfg: HighwaySimConfig) -> dict:
    """Inverse of `command_to_action` (after clamping to [-1, 1])."""
    a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
    return {"acceleration": float(a[0] * cfg.max_acceleration), "steering": float(a[1] * cfg.max_steering)}


def expert_action(env, cfg: HighwaySimConfig) -> np.ndarray:
    """The IDM + MOBIL expert's normalised action [2] for the current state (call once per control step)."""
    return command_to_action(_u(env).vehicle.expert_command(), cfg)


def expert_future(env, cfg: HighwaySimConfig, steps: int | None = None) -> np.ndarray:
    """World poses [steps, 3] the expert would reach over the next `steps` control steps (default: one chunk).

    Runs on a deep copy of the env (highway-env copies without its viewer), so `env` is not touched. The other
    vehicles react as they would in the real rollout, so for an expert-driven ego this is exactly its future
    (until the episode ends; a crash freezes the remaining poses).
    """
    steps = cfg.steps_per_chunk if steps is None else steps
    sim = copy.deepcopy(_u(env))
    poses = np.zeros((steps, 3))
    done = False
    for i in range(steps):
        if not done:
            _, _, terminated, _, _ = sim.step(command_to_action(sim.vehicle.expert_command(), cfg))
            done = terminated
        poses[i] = ego_pose(sim)
    return poses


# ----------------------------------------------------------------------------------------------------------------
# State readers


class EgoState(NamedTuple):
    x: float
    y: float
    heading: float
    speed: float
    lane: int  # lane id, 0 = left-most
    on_road: bool  # every corner of the ego box is on some lane
    crashed: bool

    @property
    def pose(self) -> np.ndarray:
        return np.array([self.x, self.y, self.heading])


def ego_pose(env) -> np.ndarray:
    """[3] world pose (x, y, heading) of the ego centre."""
    v = _u(env).vehicle
    return np.array([v.position[0], v.position[1], v.heading], dtype=np.float64)


def ego_state(env) -> EgoState:
    u = _u(env)
    v = u.vehicle
    return EgoState(float(v.position[0]), float(v.position[1]), float(v.heading), float(v.speed),
                    int(v.lane_index[2]), box_on_road(u.road, v.position, v.heading, v.LENGTH, v.WIDTH),
                    bool(v.crashed))


def box_corners(position, heading, length, width) -> np.ndarray:
    """[4, 2] world corners of a box: front-left, rear-left, rear-right, front-right (ego's left = world -y)."""
    c, s = math.cos(heading), math.sin(heading)
    fwd, right = np.array([c, s]), np.array([-s, c])
    p = np.asarray(position, dtype=np.float64)
    hl, hw = length / 2, width / 2
    return np.stack([p + hl * fwd - hw * right, p - hl * fwd - hw * right,
                     p - hl * fwd + hw * right, p + hl * fwd + hw * right])


def box_on_road(road, position, heading, length=Vehicle.LENGTH, width=Vehicle.WIDTH) -> bool:
    """Whether all four corners of the box lie on some lane of the road network (drivable-area check)."""
    lanes = road.network.lanes_list()
    return all(any(lane.on_lane(corner) for lane in lanes) for corner in box_corners(position, heading, length, width))


def other_vehicles(env, radius: float | None = None) -> np.ndarray:
    """[N, 6] world states of the other vehicles, columns `VEHICLE_COLUMNS`; within `radius` m if given."""
    u = _u(env)
    ego = u.vehicle
    rows = [[v.position[0], v.position[1], v.heading, v.speed, v.LENGTH, v.WIDTH]
            for v in u.road.vehicles if v is not ego]
    out = np.asarray(rows, dtype=np.float64).reshape(-1, len(VEHICLE_COLUMNS))
    if radius is not None and len(out):
        out = out[np.hypot(out[:, 0] - ego.position[0], out[:, 1] - ego.position[1]) < radius]
    return out


def lane_progress_direction(env) -> np.ndarray:
    """[2] world unit vector of the road direction at the ego (for progress along the road)."""
    u = _u(env)
    v = u.vehicle
    lane = u.road.network.get_lane(v.lane_index)
    s, _ = lane.local_coordinates(v.position)
    h = lane.heading_at(s)
    return np.array([math.cos(h), math.sin(h)])


def lead_vehicle(env) -> tuple[float, float] | None:
    """(gap [m] bumper to bumper, lead speed [m/s]) of the vehicle ahead in the ego's lane, or None."""
    u = _u(env)
    v = u.vehicle
    front, _ = u.road.neighbour_vehicles(v, v.lane_index)
    if front is None:
        return None
    gap = v.lane_distance_to(front) - (v.LENGTH + front.LENGTH) / 2
    return float(gap), float(front.speed)


# ----------------------------------------------------------------------------------------------------------------
# Frames


def ego_frame_waypoints(future_poses: np.ndarray, current_pose: np.ndarray) -> np.ndarray:
    """World poses [..., 3] -> ego-frame poses [..., 3] relative to `current_pose` [3].

    Ego frame: x forward, y LEFT, heading counter-clockwise positive, all relative to the current pose.
    highway-env's world y points right, so after rotating by -heading the lateral coordinate and the heading
    change flip sign: with d = p - p0, x = cos(h0) dx + sin(h0) dy, y = sin(h0) dx - cos(h0) dy,
    heading = -(h - h0) wrapped to (-pi, pi].
    """
    p = np.asarray(future_poses, dtype=np.float64)
    x0, y0, h0 = (float(v) for v in current_pose)
    dx, dy = p[..., 0] - x0, p[..., 1] - y0
    c, s = math.cos(h0), math.sin(h0)
    out = np.stack([c * dx + s * dy, s * dx - c * dy, _wrap(-(p[..., 2] - h0))], axis=-1)
    return out


def world_from_ego(waypoints: np.ndarray, current_pose: np.ndarray) -> np.ndarray:
    """Inverse of `ego_frame_waypoints`: ego-frame poses [..., 3] -> world poses [..., 3]."""
    w = np.asarray(waypoints, dtype=np.float64)
    x0, y0, h0 = (float(v) for v in current_pose)
    c, s = math.cos(h0), math.sin(h0)
    fx, ly = w[..., 0], w[..., 1]
    return np.stack([x0 + c * fx + s * ly, y0 + s * fx - c * ly, _wrap(h0 - w[..., 2])], axis=-1)


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def render_frame(env, cfg: HighwaySimConfig) -> np.ndarray:
    """uint8 [H, W, 3] ego-centred RGB frame at `cfg.image_size` (rendered supersampled, box-filtered down)."""
    img = _u(env).render()
    h, w = cfg.image_size
    k = cfg.supersample
    pad_r, pad_c = cfg.render_pad
    expected = ((h + 2 * pad_r) * k, (w + 2 * pad_c) * k, 3)
    if img.shape != expected:
        raise RuntimeError(f"render returned {img.shape}, expected {expected}; was the env made by make_env?")
    if cfg.heading_up:
        # Only the frame's own pixels are rotated; the pad is there to be sampled from.
        img = _rotate_about(img, -float(_u(env).vehicle.heading),
                            ((cfg.centering[1] * h + pad_r) * k, (cfg.centering[0] * w + pad_c) * k),
                            (pad_r * k, pad_c * k, h * k, w * k))
    if k > 1:
        img = img.reshape(h, k, w, k, 3).astype(np.float32).mean(axis=(1, 3))
        img = np.round(img).astype(np.uint8)
    return np.ascontiguousarray(img)


def _rotate_about(img: np.ndarray, angle: float, center_rc: tuple[float, float],
                  window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Rotates an image [H, W, 3] by `angle` (radians, screen coordinates: x right, y down, positive = the
    direction that turns +x towards +y) about the pixel (row, col) `center_rc`; bilinear, edges padded with the
    border colour. `window` = (row, col, height, width): only that part of the rotated image is computed."""
    from scipy import ndimage
    c, s = math.cos(angle), math.sin(angle)
    # Output pixel (r, q) samples input at centre + R(-angle) · ((r, q) − centre), in (row, col) = (y, x) order.
    matrix = np.array([[c, -s], [s, c]])
    center = np.asarray(center_rc)
    r0, q0, h, w = window if window is not None else (0, 0, *img.shape[:2])
    offset = center - matrix @ (center - np.array([r0, q0]))
    out = np.empty((h, w, img.shape[2]), img.dtype)
    for ch in range(img.shape[2]):
        out[..., ch] = ndimage.affine_transform(img[..., ch], matrix, offset=offset, output_shape=(h, w), order=1,
                                                mode="nearest")
    return out


def world_to_pixel(points_world: np.ndarray, ego_xy: np.ndarray, cfg: HighwaySimConfig) -> np.ndarray:
    """[..., 2] world points -> [..., 2] (col, row) float pixel coordinates in a `render_frame` image."""
    h, w = cfg.image_size
    p = np.asarray(points_world, dtype=np.float64)[..., :2] - np.asarray(ego_xy)[:2]
    col = p[..., 0] * cfg.scaling + cfg.centering[0] * w
    row = p[..., 1] * cfg.scaling + cfg.centering[1] * h
    return np.stack([col, row], axis=-1)


# ----------------------------------------------------------------------------------------------------------------
# Intents


class Intent(NamedTuple):
    command: str  # one of INTENTS
    text: str  # a short phrase, e.g. "keep lane, follow the car ahead"

    @property
    def index(self) -> int:
        return INTENTS.index(self.command)


LANE_WIDTH = 4.0
_FOLLOW_GAP_S = 2.5  # a lead vehicle within this time gap is "followed"
_SLOW_GAP_S = 1.0  # closer than this time gap -> slow down
_SLOW_TTC_S = 3.0  # closing in faster than this -> slow down


def intent_from_future(waypoints_ego: np.ndarray, current_speed: float, cfg: HighwaySimConfig,
                       lead_gap: float | None = None) -> Intent:
    """Intent of a future over one chunk, given as ego-frame waypoints [N, 3] at `cfg.waypoint_times`.

    Rules, first match wins: final lateral offset beyond half a lane (2 m) -> change lane left (y > 0) / right;
    final speed below the current speed by more than max(2 m/s, 10%) -> slow down; else keep lane.
    `lead_gap` [m] (gap to the car ahead, if known) only picks the phrase.
    """
    wp = np.asarray(waypoints_ego, dtype=np.float64)
    y_end = float(wp[-1, 1])
    if y_end > LANE_WIDTH / 2:
        return Intent("change lane left", "change lane left")
    if y_end < -LANE_WIDTH / 2:
        return Intent("change lane right", "change lane right")
    times = np.concatenate([[0.0], cfg.waypoint_times[: len(wp)]])
    xy = np.concatenate([[[0.0, 0.0]], wp[:, :2]])
    seg_speed = np.linalg.norm(np.diff(xy, axis=0), axis=1) / np.diff(times)
    final_speed = float(seg_speed[-1])
    following = lead_gap is not None and lead_gap < _FOLLOW_GAP_S * max(current_speed, 1.0)
    if final_speed < current_speed - max(2.0, 0.1 * current_speed):
        return Intent("slow down", "slow down for the car ahead" if following else "slow down")
    return Intent("keep lane", "keep lane, follow the car ahead" if following else "keep lane, cruise")


def intent_from_scene(env) -> Intent:
    """Intent from the current scene alone (no future): for online use.

    If the car ahead is close (time gap < 1 s) or closing in (time to collision < 3 s): change lane when
    highway-env's MOBIL model (the expert's own rule) accepts a side lane, left first, else slow down.
    Otherwise keep lane (phrase: follow the car ahead when within a 2.5 s gap, else cruise).
    """
    u = _u(env)
    v = u.vehicle
    lead = lead_vehicle(env)
    speed = max(float(v.speed), 1.0)
    if lead is None:
        return Intent("keep lane", "keep lane, cruise")
    gap, lead_speed = lead
    closing = float(v.speed) - lead_speed
    ttc = gap / closing if closing > 1e-6 else math.inf
    if gap < _SLOW_GAP_S * speed or ttc < _SLOW_TTC_S:
        if isinstance(v, IDMVehicle):
            for lane_index in sorted(u.road.network.side_lanes(v.lane_index), key=lambda li: li[2]):
                if u.road.network.get_lane(lane_index).is_reachable_from(v.position) and v.mobil(lane_index):
                    side = "left" if lane_index[2] < v.lane_index[2] else "right"
                    return Intent(f"change lane {side}", f"change lane {side} to overtake")
        return Intent("slow down", "slow down for the car ahead")
    if gap < _FOLLOW_GAP_S * speed:
        return Intent("keep lane", "keep lane, follow the car ahead")
    return Intent("keep lane", "keep lane, cruise")


def scene_intent(env, cfg: HighwaySimConfig, future_poses: np.ndarray | None = None) -> Intent:
    """The intent at the current state: from the expert's future world poses [N, 3] (at `cfg.waypoint_times`)
    when given, else from the scene (`intent_from_scene`). Deterministic."""
    if future_poses is None:
        return intent_from_scene(env)
    lead = lead_vehicle(env)
    wp = ego_frame_waypoints(future_poses, ego_pose(env))
    return intent_from_future(wp, float(_u(env).vehicle.speed), cfg, None if lead is None else lead[0])


# ----------------------------------------------------------------------------------------------------------------
# Waypoint-tracking controller


@dataclasses.dataclass(frozen=True)
class TrackerConfig:
    lookahead_s: float = 0.8  # pure-pursuit look-ahead time
    lookahead_min: float = 5.0  # [m]
    speed_preview_s: float = 0.0  # speed reference taken this far ahead of the current plan time
    k_speed: float = 1.0 / 0.6  # [1/s] P gain on speed error (highway-env's own TAU_ACC = 0.6 s)
    k_station: float = 0.3  # [1/s^2] P gain on along-path position error


class WaypointTracker:
    """Follows a plan of ego-frame waypoints with pure pursuit (steering) and P control (speed).

    `set_plan(waypoints_ego [N, 3], times [N], pose_at_plan [3], speed)` stores the plan in world coordinates
    (prefixed by the plan pose at t = 0); `__call__(pose, speed, elapsed_s)` returns the normalised
    ContinuousAction [2]. Steering: the look-ahead point (max(lookahead_min, lookahead_s * v) along the path,
    past the projection of the ego; beyond the last waypoint the path continues along its heading) gives the
    curvature k = 2 y / d^2; highway-env's bicycle model (slip angle b, heading rate v sin(b) / (L/2)) is
    inverted for the steering angle. Speed: the plan's arc length vs time gives a reference speed (central
    differences) and station; acceleration = a_ref + k_speed (v_ref - v) + k_station (s_ref - s).
    """

    def __init__(self, cfg: HighwaySimConfig, tracker: TrackerConfig = TrackerConfig()):
        self.cfg = cfg
        self.tcfg = tracker
        self._path = None

    def set_plan(self, waypoints_ego: np.ndarray, times: np.ndarray, pose_at_plan: np.ndarray, speed: float):
        wp = np.asarray(waypoints_ego, dtype=np.float64)
        if wp.ndim != 2 or wp.shape[1] != 3 or len(wp) != len(times):
            raise ValueError(f"waypoints must be [N, 3] with N = len(times); got {wp.shape} and {len(times)} times")
        world = world_from_ego(wp, pose_at_plan)
        self._path = np.concatenate([np.asarray(pose_at_plan, dtype=np.float64)[None, :2], world[:, :2]])
        self._end_heading = float(world[-1, 2])
        self._times = np.concatenate([[0.0], np.asarray(times, dtype=np.float64)])
        seg = np.linalg.norm(np.diff(self._path, axis=0), axis=1)
        self._seg = seg
        self._s = np.concatenate([[0.0], np.cumsum(seg)])
        self._speed0 = float(speed)

    def reference(self, elapsed_s: float) -> tuple[float, float, float]:
        """(station s_ref [m], speed v_ref [m/s], acceleration a_ref [m/s^2]) of the plan at `elapsed_s` after
        the plan start; speed and acceleration are central differences, previewed `speed_preview_s` ahead."""
        t, s = self._times, self._s
        end_speed = float(self._seg[-1] / max(t[-1] - t[-2], 1e-6))

        def station(tq):
            if tq <= t[-1]:
                return float(np.interp(tq, t, s))
            return float(s[-1] + end_speed * (tq - t[-1]))

        def speed(tq, h=0.25):
            lo = max(tq - h, 0.0)
            return (station(tq + h) - station(lo)) / (tq + h - lo)

        tq = elapsed_s + self.tcfg.speed_preview_s
        v_ref = max(speed(tq), 0.0)
        a_ref = (speed(tq + 0.25) - speed(max(tq - 0.25, 0.0))) / (tq + 0.25 - max(tq - 0.25, 0.0))
        return station(elapsed_s), v_ref, a_ref

    def _project(self, p: np.ndarray) -> float:
        a, b = self._path[:-1], self._path[1:]
        ab = b - a
        L2 = np.maximum(np.sum(ab * ab, axis=1), 1e-12)
        u = np.clip(np.sum((p - a) * ab, axis=1) / L2, 0.0, 1.0)
        d = np.linalg.norm(a + u[:, None] * ab - p, axis=1)
        i = int(np.argmin(d))
        return float(self._s[i] + u[i] * self._seg[i])

    def _point_at(self, s_query: float) -> np.ndarray:
        if s_query >= self._s[-1]:
            h = self._end_heading
            return self._path[-1] + (s_query - self._s[-1]) * np.array([math.cos(h), math.sin(h)])
        x = np.interp(s_query, self._s, self._path[:, 0])
        y = np.interp(s_query, self._s, self._path[:, 1])
        return np.array([x, y])

    def command(self, pose: np.ndarray, speed: float, elapsed_s: float) -> dict:
        """{acceleration [m/s^2], steering [rad]} (unclamped) to follow the plan from `pose` at `elapsed_s`."""
        if self._path is None:
            raise RuntimeError("WaypointTracker: call set_plan before asking for an action")
        pose = np.asarray(pose, dtype=np.float64)
        s_now = self._project(pose[:2])
        look = max(self.tcfg.lookahead_min, self.tcfg.lookahead_s * abs(speed))
        target = ego_frame_waypoints(np.array([*self._point_at(s_now + look), 0.0]), pose)
        tx, ty = float(target[0]), float(target[1])
        curvature_left = 2.0 * ty / max(tx * tx + ty * ty, 1e-6)
        half_len = Vehicle.LENGTH / 2
        slip = math.asin(float(np.clip(-curvature_left * half_len, -1.0, 1.0)))  # world heading rate sign
        steering = math.atan(2.0 * math.tan(slip))
        s_ref, v_ref, a_ref = self.reference(elapsed_s)
        accel = a_ref + self.tcfg.k_speed * (v_ref - speed) + self.tcfg.k_station * (s_ref - s_now)
        return {"acceleration": float(accel), "steering": float(steering)}

    def __call__(self, pose: np.ndarray, speed: float, elapsed_s: float) -> np.ndarray:
        """Normalised ContinuousAction [2] in [-1, 1] (clamped to the env's action ranges)."""
        return command_to_action(self.command(pose, speed, elapsed_s), self.cfg)


# ----------------------------------------------------------------------------------------------------------------
# Recording an expert episode (for datasets)


@dataclasses.dataclass
class EpisodeRecord:
    """One expert episode. T = control steps recorded + 1 (states include the initial one)."""

    seed: int
    poses: np.ndarray  # [T, 3] world poses at every control step
    speeds: np.ndarray  # [T]
    lanes: np.ndarray  # [T] int lane ids (0 = left-most)
    on_road: np.ndarray  # [T] bool
    crashed: np.ndarray  # [T] bool
    actions: np.ndarray  # [T-1, 2] normalised action applied from state t to t+1
    frames: np.ndarray  # [F, H, W, 3] uint8, one every cfg.steps_per_frame steps (state index = frame_steps)
    frame_steps: np.ndarray  # [F] int state index of each frame

    def chunk_waypoints(self, start: int, cfg: HighwaySimConfig) -> np.ndarray:
        """Ego-frame waypoints [N, 3] of the chunk starting at state `start` (needs start + steps_per_chunk < T)."""
        idx = start + cfg.steps_per_waypoint * (np.arange(cfg.waypoints_per_chunk) + 1)
        if idx[-1] >= len(self.poses):
            raise IndexError(f"chunk at step {start} needs state {idx[-1]}, episode has {len(self.poses)} states")
        return ego_frame_waypoints(self.poses[idx], self.poses[start])

    def chunk_intent(self, start: int, cfg: HighwaySimConfig) -> Intent:
        """Intent of the chunk starting at `start`, from the recorded future (`intent_from_future`)."""
        return intent_from_future(self.chunk_waypoints(start, cfg), float(self.speeds[start]), cfg)


def _steer(action: np.ndarray, offset: float) -> np.ndarray:
    """The normalised action with `offset` added to its steering, clamped to [-1, 1] (noise injection)."""
    return np.array([action[0], np.clip(action[1] + offset, -1.0, 1.0)], dtype=action.dtype)


def record_expert_episode(cfg: HighwaySimConfig, seed: int, steps: int | None = None,
                          render: bool = True, env: gym.Env | None = None) -> EpisodeRecord:
    """Drives the expert for `steps` control steps (default: the whole `duration_s`) from a `seed` reset.

    Stops early if the ego crashes. Frames (if `render`) are taken at states 0, k, 2k, ... with
    k = cfg.steps_per_frame. Pass `env` to reuse one built by `make_env(cfg, ...)`.
    """
    steps = int(round(cfg.duration_s * cfg.control_hz)) if steps is None else int(steps)
    if env is None:
        env = make_env(cfg, seed)
    else:
        reset_env(env, seed)
    poses, speeds, lanes, on_road, crashed, actions, frames, frame_steps = [], [], [], [], [], [], [], []

    def observe(t):
        st = ego_state(env)
        poses.append(st.pose), speeds.append(st.speed), lanes.append(st.lane)
        on_road.append(st.on_road), crashed.append(st.crashed)
        if render and t % cfg.steps_per_frame == 0:
            frames.append(render_frame(env, cfg)), frame_steps.append(t)

    observe(0)
    noise = np.random.default_rng([int(seed), 7])
    spc = cfg.steps_per_chunk
    burst_left, offset = 0, 0.0
    recovery_steps = int(round(cfg.perturb_s * cfg.control_hz))
    recovery_end = spc - int(round(cfg.recovery_lead_s * cfg.control_hz))
    recovery = np.random.default_rng([int(seed), 8])      # its own stream: the other bursts stay as they were
    recovery_offset = recovery.choice([-1.0, 1.0]) * recovery.uniform(0.5, 1.0) * cfg.recovery_steering
    for t in range(steps):
        a = expert_action(env, cfg)
        if cfg.recovery_steering > 0 and recovery_end - recovery_steps <= t < recovery_end:
            a = _steer(a, recovery_offset)
        in_window = cfg.perturb_window_s <= 0 or (t % spc) >= spc - round(cfg.perturb_window_s * cfg.control_hz)
        if (cfg.perturb_steering > 0 and burst_left == 0 and noise.random() < cfg.perturb_rate_hz / cfg.control_hz
                and in_window):
            burst_left = int(round(cfg.perturb_s * cfg.control_hz))
            offset = noise.uniform(-cfg.perturb_steering, cfg.perturb_steering)
        if burst_left > 0:
            a = _steer(a, offset)
            burst_left -= 1
        _, _, terminated, truncated, _ = env.step(a)
        actions.append(a)
        observe(t + 1)
        if terminated or truncated:
            break
    h, w = cfg.image_size
    return EpisodeRecord(
        seed=int(seed), poses=np.asarray(poses), speeds=np.asarray(speeds), lanes=np.asarray(lanes, dtype=np.int32),
        on_road=np.asarray(on_road), crashed=np.asarray(crashed),
        actions=np.asarray(actions, dtype=np.float32).reshape(-1, 2),
        frames=np.asarray(frames, dtype=np.uint8).reshape(-1, h, w, 3),
        frame_steps=np.asarray(frame_steps, dtype=np.int32))


def describe_config(cfg: HighwaySimConfig) -> dict[str, Any]:
    """Plain dict of the config (for metadata files)."""
    return dataclasses.asdict(cfg)


__all__ = [
    "INTENTS", "VEHICLE_COLUMNS", "HighwaySimConfig", "ExpertEgoVehicle", "make_env", "reset_env", "env_config",
    "command_to_action", "action_to_command", "expert_action", "expert_future", "EgoState", "ego_pose",
    "ego_state", "box_corners", "box_on_road", "other_vehicles", "lane_progress_direction", "lead_vehicle",
    "ego_frame_waypoints", "world_from_ego", "render_frame", "world_to_pixel", "Intent", "intent_from_future",
    "intent_from_scene", "scene_intent", "TrackerConfig", "WaypointTracker", "EpisodeRecord",
    "record_expert_episode", "describe_config",
]
