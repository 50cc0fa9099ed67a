"""PDMS-lite: NAVSIM's PDM score (v1) and extended PDM score (v2) without nuplan-devkit.

Pipeline (navsim `evaluate/pdm_score.py` + `pdm_planner/scoring/pdm_scorer.py`):

    plan [8, 3] (rear-axle local, 0.5 s) -> global -> prepend current pose -> 41 poses @ 0.1 s
    -> LQR tracker + kinematic bicycle (`navsim_sim`) -> states [P, 41, 11] -> sub-scores -> aggregate

    v1 (navsim v1.1):  PDMS  = NC * DAC * (5 TTC + 5 EP + 2 C + 0 DDC) / 12
    v2 (navsim main):  EPDMS = NC * DAC * DDC * TLC * (5 EP + 5 TTC + 2 LK + 2 HC + 2 EC) / 16
                       (EC left out with its weight, i.e. / 14, when no previous frame is given)

The reference (PDM-Closed in NAVSIM) is a given trajectory or a given progress value (`Reference`); see
docs/METRICS.md for what follows NAVSIM exactly and what is simplified.

Public API:
    pdms(scene, plan) -> PDMSResult
    epdms(scene, plan, human_penalty_filter=True) -> EPDMSResult
    score_states(scene, states, version) -> SubScores        (lower level: already simulated states)
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Dict, Optional

import numpy as np
import shapely

from wam_jax.metrics import navsim_comfort, navsim_sim
from wam_jax.metrics.navsim_scene import (
    CENTER, DRIVABLE_LAYERS, FRONT_LEFT, FRONT_RIGHT, HEADING, LANE_LAYERS, STATE_SIZE, VX, VY, X, Y,
    DrivableMap, MapLayer, NavsimScene, Observation, ObjectBox, centerline_linestring, coords_to_polygons,
    ego_coords,
)

DT = navsim_sim.DT
NUM_STATES = navsim_sim.NUM_POSES + 1  # 41

# PDMScorerConfig defaults
V1_WEIGHTS = {"ep": 5.0, "ttc": 5.0, "c": 2.0, "ddc": 0.0}
V2_WEIGHTS = {"ep": 5.0, "ttc": 5.0, "lk": 2.0, "hc": 2.0, "ec": 2.0}
DRIVING_DIRECTION_HORIZON_S = 1.0
DRIVING_DIRECTION_COMPLIANCE_M = 2.0
DRIVING_DIRECTION_VIOLATION_M = 6.0
TTC_STOPPED_SPEED = 5e-3  # [m/s] ego speed below which TTC is not checked
TTC_HORIZON_S = 1.0
TTC_OFFSETS_S = (0.0, 0.3, 0.6, 0.9)  # look-ahead of the TTC check: {0, 3, 6, 9} steps of DT within the horizon
COLLISION_STOPPED_SPEED = 5e-2  # [m/s] nuPlan stopped threshold for ego and tracks
PROGRESS_DISTANCE_THRESHOLD_M = 5.0
LANE_KEEPING_DEVIATION_M = 0.5
LANE_KEEPING_WINDOW_S = 2.0
AGENT_AHEAD_DEG = 30.0  # nuPlan idm utils is_agent_ahead
AGENT_BEHIND_DEG = 150.0  # nuPlan idm utils is_agent_behind


class CollisionType(enum.Enum):
    STOPPED_EGO = 0
    STOPPED_TRACK = 1
    ACTIVE_FRONT = 2
    ACTIVE_REAR = 3
    ACTIVE_LATERAL = 4


@dataclasses.dataclass(frozen=True, eq=False)
class SubScores:
    """Raw per-proposal sub-scores, each [P] (before progress normalisation and aggregation)."""

    nc: np.ndarray
    dac: np.ndarray
    ddc: np.ndarray
    tlc: np.ndarray
    ttc: np.ndarray
    lk: np.ndarray
    c: np.ndarray
    hc: np.ndarray
    progress_m: np.ndarray  # raw progress along the centerline, clipped at 0


@dataclasses.dataclass(frozen=True, eq=False)
class PDMSResult:
    """NAVSIM v1 PDM score of one plan."""

    nc: float
    dac: float
    ddc: float  # computed, weight 0 in v1
    ttc: float
    ep: float
    c: float
    score: float
    progress_m: float  # agent raw progress [m]
    normaliser_m: float  # max over proposals of progress * multipliers (EP denominator when > 5 m)
    states: np.ndarray  # [41, 11] simulated agent states

    def as_dict(self) -> Dict[str, float]:
        return {k: getattr(self, k) for k in ("nc", "dac", "ddc", "ttc", "ep", "c", "score", "progress_m")}


@dataclasses.dataclass(frozen=True, eq=False)
class EPDMSResult:
    """NAVSIM v2 extended PDM score of one plan (sub-scores after the human penalty filter)."""

    nc: float
    dac: float
    ddc: float
    tlc: float
    ep: float
    ttc: float
    lk: float
    hc: float
    ec: float  # nan when the scene has no previous frame
    score: float  # EPDMS (EC included when available, as in run_pdm_score.compute_final_scores)
    score_without_ec: float  # the scorer's own pdm_score (EC excluded, / 14)
    unfiltered: Dict[str, float]  # agent sub-scores before the human penalty filter
    human: Optional[Dict[str, float]]  # human sub-scores used by the filter (None if not applied)
    progress_m: float
    states: np.ndarray  # [41, 11]

    def as_dict(self) -> Dict[str, float]:
        keys = ("nc", "dac", "ddc", "tlc", "ep", "ttc", "lk", "hc", "ec", "score", "score_without_ec", "progress_m")
        return {k: getattr(self, k) for k in keys}


# --- compiled scene ------------------------------------------------------------------------------------------


class _Compiled:
    def __init__(self, scene: NavsimScene):
        self.scene = scene
        self.vehicle = scene.vehicle
        self.dmap = DrivableMap(scene.map_polygons)
        self.obs = Observation(scene, self.dmap)
        if len(self.obs) < NUM_STATES:
            raise ValueError(
                f"NavsimScene.objects has {len(self.obs)} steps; PDMS needs at least {NUM_STATES} "
                "(0 ... 4 s at 0.1 s; v1 TTC uses up to 50, i.e. 4.9 s). Pad with empty lists if no objects.")
        self.centerline = centerline_linestring(scene.centerline)
        route = set(map(str, scene.route_lane_ids))
        self.lane_idx = self.dmap.indices_of(LANE_LAYERS)
        self.drivable_idx = self.dmap.indices_of(DRIVABLE_LAYERS)
        self.on_route_idx = [i for i in self.lane_idx if self.dmap.ids[i] in route]


# --- sub-scores ----------------------------------------------------------------------------------------------


def _ego_areas(c: _Compiled, coords: np.ndarray):
    """coords [P, T, 5, 2] -> (multiple_lanes, non_drivable, oncoming), each bool [P, T]."""
    inside = c.dmap.points_in_polygons(coords)  # [n_poly, P, T, 5]
    corners, center = inside[..., :4], inside[..., 4]
    lanes = corners[c.lane_idx]  # [L, P, T, 4]
    multiple = (lanes.any(-1).sum(0) > 1) & np.all(lanes.sum(-1) != 4, axis=0)
    non_drivable = corners[c.drivable_idx].any(0).sum(-1) < 4
    oncoming = center[c.on_route_idx].sum(0) == 0
    return multiple, non_drivable, oncoming


def _relative_angle(pose: np.ndarray, point) -> float:
    """Angle between ego heading and the ray ego -> point (nuPlan `get_agent_relative_angle`); nan at distance 0."""
    vx, vy = point[0] - pose[0], point[1] - pose[1]
    norm = math.hypot(vx, vy)
    if norm == 0.0:
        return math.nan
    dot = (math.cos(pose[2]) * vx + math.sin(pose[2]) * vy) / norm
    return math.acos(max(-1.0, min(1.0, dot)))


def _is_ahead(pose, point) -> bool:
    return _relative_angle(pose, point) < math.radians(AGENT_AHEAD_DEG)


def _is_behind(pose, point) -> bool:
    return _relative_angle(pose, point) > math.radians(AGENT_BEHIND_DEG)


def _collision_type(state: np.ndarray, coords: np.ndarray, obj: ObjectBox, obj_polygon) -> CollisionType:
    """navsim `get_collision_type` with nuPlan's `is_track_stopped` (non-agents are always stopped)."""
    if math.hypot(state[VX], state[VY]) <= COLLISION_STOPPED_SPEED:
        return CollisionType.STOPPED_EGO
    if not obj.is_agent or obj.speed <= COLLISION_STOPPED_SPEED:
        return CollisionType.STOPPED_TRACK
    centroid = shapely.get_coordinates(shapely.centroid(obj_polygon))[0]
    if _is_behind(state[X:HEADING + 1], centroid):
        return CollisionType.ACTIVE_REAR
    front = shapely.LineString([coords[FRONT_LEFT], coords[FRONT_RIGHT]])
    if front.intersects(obj_polygon):
        return CollisionType.ACTIVE_FRONT
    return CollisionType.ACTIVE_LATERAL


def _no_at_fault_collision(c: _Compiled, states, coords, polygons, multiple, non_drivable) -> np.ndarray:
    n_prop, n_time = states.shape[:2]
    scores = np.ones(n_prop)
    ignored = [set(map(str, c.scene.collided_track_ids)) for _ in range(n_prop)]
    for t in range(n_time):
        step = c.obs[t]
        for p, g in zip(*step.query(polygons[:, t])):
            token = step.tokens[g]
            if step.is_red_light[g] or token in ignored[p]:
                continue
            obj = c.obs.unique_objects[token]
            kind = _collision_type(states[p, t], coords[p, t], obj, step.geometries[g])
            lateral_at_fault = (multiple[p, t] or non_drivable[p, t]) and kind == CollisionType.ACTIVE_LATERAL
            if kind in (CollisionType.ACTIVE_FRONT, CollisionType.STOPPED_TRACK) or lateral_at_fault:
                scores[p] = min(scores[p], 0.0 if obj.is_agent else 0.5)
            else:
                ignored[p].add(token)
    return scores


def _ttc(c: _Compiled, states, coords, multiple, non_drivable, version: int) -> np.ndarray:
    n_prop, n_time = states.shape[:2]
    future = np.round(np.asarray(TTC_OFFSETS_S) / DT).astype(int)  # {0, 3, 6, 9} steps
    ring = coords.copy()
    ring[..., CENTER, :] = ring[..., FRONT_LEFT, :]
    speeds = np.hypot(states[..., VX], states[..., VY])
    dxy = np.stack([np.cos(states[..., HEADING]) * speeds, np.sin(states[..., HEADING]) * speeds], axis=-1)
    projected = [shapely.polygons(ring + dxy[:, :, None, :] * (f * DT)) for f in future]  # each [P, T]
    in_intersection = c.dmap.in_layer(states[..., X:Y + 1], MapLayer.INTERSECTION)  # rear axle [P, T]
    # v1 checks every step (its observation reaches 5 s); v2 only the steps whose look-ahead stays within 4 s.
    n_eval = n_time if version == 1 else (n_time - 1) - int(future.max()) + 1

    scores = np.ones(n_prop)
    ignored = [set(map(str, c.scene.collided_track_ids)) for _ in range(n_prop)]
    for t in range(n_eval):
        for k, f in enumerate(future):
            obs_t = t + int(f)
            if obs_t >= len(c.obs):
                continue  # look-ahead beyond the given observation
            step = c.obs[obs_t]
            for p, g in zip(*step.query(projected[k][:, t])):
                token = step.tokens[g]
                if step.is_red_light[g] or token in ignored[p] or speeds[p, t] < TTC_STOPPED_SPEED:
                    continue
                pose = states[p, t, X:HEADING + 1]
                centroid = shapely.get_coordinates(shapely.centroid(step.geometries[g]))[0]
                area_flag = multiple[p, t] or non_drivable[p, t] or in_intersection[p, t]
                if _is_ahead(pose, centroid) or (area_flag and not _is_behind(pose, centroid)):
                    scores[p] = 0.0
                else:
                    ignored[p].add(token)
    return scores


def _traffic_light_compliance(c: _Compiled, polygons) -> np.ndarray:
    n_prop, n_time = polygons.shape
    scores = np.ones(n_prop)
    for t in range(n_time):
        step = c.obs[t]
        for p, g in zip(*step.query(polygons[:, t])):
            if step.is_red_light[g]:
                scores[p] = 0.0
    return scores


def _driving_direction_compliance(coords, oncoming) -> np.ndarray:
    center = coords[..., CENTER, :]
    progress = np.zeros(center.shape[:2])
    progress[:, 1:] = np.linalg.norm(np.diff(center, axis=1), axis=-1)
    progress[~oncoming] = 0.0
    horizon = int(DRIVING_DIRECTION_HORIZON_S / DT)
    csum = np.concatenate([np.zeros((len(progress), 1)), np.cumsum(progress, axis=1)], axis=1)
    n_time = progress.shape[1]
    lo = np.maximum(0, np.arange(n_time) - horizon)
    windows = csum[:, np.arange(n_time) + 1] - csum[:, lo]  # sum over [t - horizon, t]
    worst = windows.max(axis=1)
    return np.where(worst < DRIVING_DIRECTION_COMPLIANCE_M, 1.0,
                    np.where(worst < DRIVING_DIRECTION_VIOLATION_M, 0.5, 0.0))


def _progress(c: _Compiled, coords) -> np.ndarray:
    start = shapely.points(coords[:, 0, CENTER])
    end = shapely.points(coords[:, -1, CENTER])
    progress = shapely.line_locate_point(c.centerline, end) - shapely.line_locate_point(c.centerline, start)
    return np.clip(progress, 0.0, None)


def _lane_keeping(c: _Compiled, coords) -> np.ndarray:
    center = coords[..., CENTER, :]
    in_intersection = c.dmap.in_layer(center, MapLayer.INTERSECTION)
    deviation = shapely.distance(shapely.points(center), c.centerline)
    required = int(math.ceil(LANE_KEEPING_WINDOW_S / DT))
    scores = np.ones(len(center))
    for p in range(len(center)):
        run = 0
        for t in range(center.shape[1]):
            if in_intersection[p, t]:
                continue  # navsim skips intersection steps without resetting the run
            run = run + 1 if deviation[p, t] > LANE_KEEPING_DEVIATION_M else 0
            if run >= required:
                scores[p] = 0.0
                break
    return scores


def _resample_history(times_s: np.ndarray, history: np.ndarray, dt: float = DT) -> np.ndarray:
    """navsim `_calculate_history_comfort`: sample the past at dt from its start, excluding its end, then drop
    the last sample. times_s: [N]; history: [N, 11] -> [M, 11]."""
    start_us, end_us = int(round(times_s[0] * 1e6)), int(round(times_s[-1] * 1e6))
    query_us = np.clip(np.arange(start_us, end_us, int(round(dt * 1e6)), dtype=np.int64), start_us, end_us)[:-1]
    if len(query_us) == 0:
        return np.zeros((0, STATE_SIZE))
    q = query_us / 1e6
    out = np.stack([np.interp(q, times_s, history[:, i]) for i in range(STATE_SIZE)], axis=-1)
    pose = navsim_sim.interpolate_poses(times_s, history[:, X:HEADING + 1], q)
    out[:, HEADING] = pose[:, 2]
    return out


def _history_comfort(c: _Compiled, states) -> np.ndarray:
    past = c.scene.human_past
    if past is None:
        return np.ones(len(states))
    times = np.asarray(past.times_s, dtype=np.float64)
    hist = np.asarray(past.states, dtype=np.float64)
    if hist.shape != (len(times), STATE_SIZE) or np.any(np.diff(times) <= 0):
        raise ValueError(f"HumanPast: need increasing times [N] and states [N, {STATE_SIZE}], "
                         f"got {times.shape} and {hist.shape}.")
    history = _resample_history(times, hist)
    padded = np.concatenate([np.broadcast_to(history, (len(states),) + history.shape), states], axis=1)
    time_s = np.arange(padded.shape[1]) * DT
    return navsim_comfort.is_comfortable(padded, time_s, c.vehicle).astype(np.float64)


def score_states(scene: NavsimScene, states: np.ndarray, version: int = 2, *, _compiled=None,
                 with_history: bool = True) -> SubScores:
    """Score simulated states [P, 41, 11] (global frame) against a scene. Returns raw sub-scores per proposal.

    version selects the TTC evaluation window (v1: all 41 steps, v2: steps 0 ... 31).
    """
    if version not in (1, 2):
        raise ValueError(f"version must be 1 (PDMS) or 2 (EPDMS), got {version!r}.")
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 3 or states.shape[1:] != (NUM_STATES, STATE_SIZE):
        raise ValueError(f"states must be [P, {NUM_STATES}, {STATE_SIZE}], got {states.shape}.")
    c = _compiled or _Compiled(scene)
    coords = ego_coords(states, c.vehicle)
    polygons = coords_to_polygons(coords)
    multiple, non_drivable, oncoming = _ego_areas(c, coords)
    return SubScores(
        nc=_no_at_fault_collision(c, states, coords, polygons, multiple, non_drivable),
        dac=np.where(non_drivable.any(axis=-1), 0.0, 1.0),
        ddc=_driving_direction_compliance(coords, oncoming),
        tlc=_traffic_light_compliance(c, polygons),
        ttc=_ttc(c, states, coords, multiple, non_drivable, version),
        lk=_lane_keeping(c, coords),
        c=navsim_comfort.is_comfortable(states, np.arange(NUM_STATES) * DT, c.vehicle).astype(np.float64),
        hc=_history_comfort(c, states) if with_history else np.ones(len(states)),
        progress_m=_progress(c, coords),
    )


# --- aggregation ---------------------------------------------------------------------------------------------


def normalized_progress(progress_m: np.ndarray, multipliers: np.ndarray,
                        reference_raw_m: Optional[float] = None):
    """EP = raw / max(raw over proposals and reference) if that max > 5 m, else 1 (0 where multipliers are 0).

    raw = progress * multiplier product. Returns (ep [P], max_raw)."""
    raw = np.asarray(progress_m, np.float64) * np.asarray(multipliers, np.float64)
    candidates = raw if reference_raw_m is None else np.append(raw, max(0.0, float(reference_raw_m)))
    max_raw = float(np.max(candidates))
    if max_raw > PROGRESS_DISTANCE_THRESHOLD_M:
        return raw / max_raw, max_raw
    ep = np.ones(len(raw))
    ep[np.asarray(multipliers) == 0.0] = 0.0
    return ep, max_raw


def pdms_aggregate(nc, dac, ttc, ep, c, ddc=1.0) -> float:
    """PDMS = NC * DAC * (5 TTC + 5 EP + 2 C + 0 DDC) / 12."""
    w = V1_WEIGHTS
    weighted = (w["ttc"] * ttc + w["ep"] * ep + w["c"] * c + w["ddc"] * ddc) / sum(w.values())
    return float(nc * dac * weighted)


def epdms_aggregate(nc, dac, ddc, tlc, ep, ttc, lk, hc, ec=math.nan) -> float:
    """EPDMS = NC * DAC * DDC * TLC * (5 EP + 5 TTC + 2 LK + 2 HC + 2 EC) / 16; EC and its weight dropped if nan."""
    w = dict(V2_WEIGHTS)
    if ec is None or math.isnan(ec):
        w.pop("ec")
        ec = 0.0
    values = {"ep": ep, "ttc": ttc, "lk": lk, "hc": hc, "ec": ec}
    weighted = sum(w[k] * values[k] for k in w) / sum(w.values())
    return float(nc * dac * ddc * tlc * weighted)


def _simulate_with_reference(scene: NavsimScene, plan):
    """Simulate [agent, reference?]; returns states [P, 41, 11] and the reference's raw progress if given as a value."""
    poses = [navsim_sim.plan_to_reference_poses(scene.ego, plan)]
    ref = scene.reference
    if ref.poses is not None:
        ref_poses = np.asarray(ref.poses, dtype=np.float64)
        if ref_poses.shape != (NUM_STATES, 3):
            raise ValueError(f"Reference.poses must be [{NUM_STATES}, 3] global poses at 0.1 s, got {ref_poses.shape}.")
        poses.append(ref_poses)
    states = navsim_sim.simulate(np.stack(poses), scene.ego, scene.vehicle)
    return states, (None if ref.progress_m is None else float(ref.progress_m))


def pdms(scene: NavsimScene, plan) -> PDMSResult:
    """NAVSIM v1 PDM score of an 8x3 plan (x, y, heading of the rear axle at 0.5 ... 4.0 s, local frame)."""
    c = _Compiled(scene)
    states, ref_progress = _simulate_with_reference(scene, plan)
    s = score_states(scene, states, version=1, _compiled=c, with_history=False)
    mult = s.nc * s.dac
    ep, max_raw = normalized_progress(s.progress_m, mult, ref_progress)
    i = 0  # agent index
    score = pdms_aggregate(s.nc[i], s.dac[i], s.ttc[i], ep[i], s.c[i], s.ddc[i])
    return PDMSResult(nc=float(s.nc[i]), dac=float(s.dac[i]), ddc=float(s.ddc[i]), ttc=float(s.ttc[i]),
                      ep=float(ep[i]), c=float(s.c[i]), score=score, progress_m=float(s.progress_m[i]),
                      normaliser_m=max_raw, states=states[i])


_FILTERED = ("nc", "dac", "ddc", "tlc", "ep", "ttc", "lk", "hc")


def _v2_subscores(s: SubScores, ref_progress: Optional[float], i: int = 0) -> Dict[str, float]:
    mult = s.nc * s.dac * s.ddc * s.tlc
    ep, _ = normalized_progress(s.progress_m, mult, ref_progress)
    return {"nc": float(s.nc[i]), "dac": float(s.dac[i]), "ddc": float(s.ddc[i]), "tlc": float(s.tlc[i]),
            "ep": float(ep[i]), "ttc": float(s.ttc[i]), "lk": float(s.lk[i]), "hc": float(s.hc[i])}


def extended_comfort(scene: NavsimScene, states: np.ndarray) -> float:
    """Two-frame extended comfort between the previous frame's simulated plan and `states` [41, 11]; nan if the
    scene has no previous frame. The overlap is int(time_offset / 0.1) steps (navsim
    `calculate_two_frame_extended_comfort`)."""
    prev = scene.previous_frame
    if prev is None:
        return math.nan
    overlap = int(prev.time_offset_s / DT + 1e-9)
    if not 1 <= overlap < NUM_STATES - 1:
        raise ValueError(f"PreviousFrame.time_offset_s must be in [0.1, 3.9] s, got {prev.time_offset_s}.")
    prev_states = navsim_sim.simulate_plan(prev.ego, prev.plan, scene.vehicle)
    earlier, later = prev_states[overlap:], states[:-overlap]
    time_s = np.arange(len(earlier)) * DT
    return float(navsim_comfort.two_frame_extended_comfort(earlier[None], later[None], time_s, scene.vehicle)[0])


def epdms(scene: NavsimScene, plan, human_penalty_filter: bool = True) -> EPDMSResult:
    """NAVSIM v2 extended PDM score of an 8x3 plan.

    With `human_penalty_filter` (NAVSIM default for original scenes) and `scene.human_future` given, the logged
    human plan is simulated and scored alone; every sub-score that is 0 for the human is set to 1 for the agent,
    and the aggregate is recomputed from the filtered sub-scores.
    """
    c = _Compiled(scene)
    states, ref_progress = _simulate_with_reference(scene, plan)
    s = score_states(scene, states, version=2, _compiled=c)
    agent = _v2_subscores(s, ref_progress)
    filtered = dict(agent)
    human = None
    if human_penalty_filter and scene.human_future is not None and not scene.is_synthetic:
        h_states = navsim_sim.simulate(navsim_sim.plan_to_reference_poses(scene.ego, scene.human_future)[None],
                                       scene.ego, scene.vehicle)
        # navsim scores the human alone (EP normalised by itself) and without the past trajectory (HC = 1).
        human = _v2_subscores(score_states(scene, h_states, version=2, _compiled=c, with_history=False), None)
        for k in _FILTERED:
            if human[k] == 0.0:
                filtered[k] = 1.0
    ec = extended_comfort(scene, states[0])
    return EPDMSResult(
        **filtered, ec=ec,
        score=epdms_aggregate(**filtered, ec=ec),
        score_without_ec=epdms_aggregate(**filtered),
        unfiltered=agent, human=human, progress_m=float(s.progress_m[0]), states=states[0],
    )
