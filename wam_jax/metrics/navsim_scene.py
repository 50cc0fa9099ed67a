"""Scene inputs of PDMS-lite: what NAVSIM's metric cache holds, as plain numpy/shapely dataclasses.

NAVSIM scores a plan against a pickled nuPlan `MetricCache` (ego state, PDM-Closed trajectory, 10 Hz future
object boxes, red-light lane connectors, drivable-area map, route lanes, centerline). This module holds the same
information without nuplan-devkit:

* `NavsimScene`    - one scene: ego state, per-step object boxes, map polygons with layer tags, route lane ids,
                     centerline, red lights per step, the reference (PDM-Closed replacement), and the optional
                     NAVSIM v2 inputs (human future for the penalty filter, human past for HC, previous frame for EC).
* `DrivableMap`    - map polygons + layer tags; point-in-polygon tests (strict interior, like
                     `shapely.vectorized.contains` in navsim's `PDMDrivableMap`).
* `Observation`    - one shapely STRtree per 0.1 s step over object boxes and red-light pseudo-objects
                     (navsim's `PDMObservation` / `PDMOccupancyMap`).

State arrays follow navsim's `StateIndex` layout: `[..., 11]` = x, y, heading (rear axle, global frame),
vx, vy, ax, ay (rear axle, body frame), steering angle, steering rate, yaw rate, yaw acceleration.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import shapely

# --- state layout (navsim pdm_enums.StateIndex) -------------------------------------------------------------
X, Y, HEADING, VX, VY, AX, AY, STEERING, STEERING_RATE, YAW_RATE, YAW_ACC = range(11)
STATE_SIZE = 11

# ego box coordinate layout (navsim BBCoordsIndex)
FRONT_LEFT, REAR_LEFT, REAR_RIGHT, FRONT_RIGHT, CENTER = range(5)

# nuPlan AGENT_TYPES (objects that move; everything else is a static object with NC penalty 0.5)
AGENT_TYPES = frozenset({"vehicle", "pedestrian", "bicycle"})
STATIC_TYPES = frozenset({"traffic_cone", "barrier", "czone_sign", "generic_object"})

RED_LIGHT_PREFIX = "red_light"


def normalize_angle(angle):
    """Wrap angles to [-pi, pi] (navsim `normalize_angle` / nuPlan `principal_value`)."""
    return np.arctan2(np.sin(angle), np.cos(angle))


@dataclasses.dataclass(frozen=True)
class VehicleParams:
    """Ego dimensions; defaults are nuPlan's Chrysler Pacifica (`get_pacifica_parameters`)."""

    width: float = 1.1485 * 2.0
    front_length: float = 4.049  # rear axle -> front bumper [m]
    rear_length: float = 1.127  # rear axle -> rear bumper [m]
    wheel_base: float = 3.089
    cog_position_from_rear_axle: float = 1.67
    height: float = 1.777

    @property
    def length(self) -> float:
        return self.front_length + self.rear_length

    @property
    def half_length(self) -> float:
        return self.length / 2.0

    @property
    def half_width(self) -> float:
        return self.width / 2.0

    @property
    def rear_axle_to_center(self) -> float:
        return self.half_length - self.rear_length


@dataclasses.dataclass(frozen=True)
class EgoState:
    """Ego state at the current frame: rear-axle pose (global), body-frame velocity/acceleration, steering."""

    x: float
    y: float
    heading: float
    vx: float = 0.0
    vy: float = 0.0
    ax: float = 0.0
    ay: float = 0.0
    steering: float = 0.0
    steering_rate: float = 0.0
    yaw_rate: float = 0.0
    yaw_acc: float = 0.0

    def as_array(self) -> np.ndarray:
        """State vector `[11]` in navsim StateIndex order."""
        return np.array(
            [self.x, self.y, self.heading, self.vx, self.vy, self.ax, self.ay, self.steering,
             self.steering_rate, self.yaw_rate, self.yaw_acc],
            dtype=np.float64,
        )

    @property
    def pose(self) -> np.ndarray:
        return np.array([self.x, self.y, self.heading], dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class ObjectBox:
    """One tracked object at one time step (box center, global frame)."""

    track_id: str
    category: str  # vehicle | pedestrian | bicycle | traffic_cone | barrier | czone_sign | generic_object
    x: float
    y: float
    heading: float
    length: float
    width: float
    vx: float = 0.0
    vy: float = 0.0

    @property
    def is_agent(self) -> bool:
        return self.category in AGENT_TYPES

    @property
    def speed(self) -> float:
        return float(np.hypot(self.vx, self.vy))

    def polygon(self) -> shapely.Polygon:
        c, s = np.cos(self.heading), np.sin(self.heading)
        hl, hw = self.length / 2.0, self.width / 2.0
        lon = np.array([hl, -hl, -hl, hl])
        lat = np.array([hw, hw, -hw, -hw])
        xs = self.x + lon * c - lat * s
        ys = self.y + lon * s + lat * c
        return shapely.Polygon(np.stack([xs, ys], axis=-1))


class MapLayer(enum.Enum):
    """The nuPlan `SemanticMapLayer` values the PDM scorer looks at."""

    LANE = "lane"
    LANE_CONNECTOR = "lane_connector"
    ROADBLOCK = "roadblock"
    INTERSECTION = "intersection"
    DRIVABLE_AREA = "drivable_area"
    CARPARK_AREA = "carpark_area"


DRIVABLE_LAYERS = (MapLayer.ROADBLOCK, MapLayer.INTERSECTION, MapLayer.DRIVABLE_AREA, MapLayer.CARPARK_AREA)
LANE_LAYERS = (MapLayer.LANE, MapLayer.LANE_CONNECTOR)


@dataclasses.dataclass(frozen=True)
class MapPolygon:
    id: str
    layer: MapLayer
    polygon: shapely.Polygon


@dataclasses.dataclass(frozen=True, eq=False)
class HumanPast:
    """Logged ego past (NAVSIM v2 history comfort).

    times_s: [N] seconds relative to the current frame (increasing, <= 0); states: [N, 11] (StateIndex layout).
    """

    times_s: np.ndarray
    states: np.ndarray

    @classmethod
    def from_poses(cls, times_s, poses, velocity=None, acceleration=None, yaw_rate=None, yaw_acc=None,
                   steering=None) -> "HumanPast":
        """Build from global rear-axle poses `[N, 3]`; dynamics default to zero."""
        times_s = np.asarray(times_s, dtype=np.float64)
        poses = np.asarray(poses, dtype=np.float64)
        n = len(times_s)
        states = np.zeros((n, STATE_SIZE), dtype=np.float64)
        states[:, X:HEADING + 1] = poses
        if velocity is not None:
            states[:, VX:VY + 1] = np.broadcast_to(np.asarray(velocity, np.float64), (n, 2))
        if acceleration is not None:
            states[:, AX:AY + 1] = np.broadcast_to(np.asarray(acceleration, np.float64), (n, 2))
        for idx, val in ((YAW_RATE, yaw_rate), (YAW_ACC, yaw_acc), (STEERING, steering)):
            if val is not None:
                states[:, idx] = np.broadcast_to(np.asarray(val, np.float64), (n,))
        return cls(times_s=times_s, states=states)


@dataclasses.dataclass(frozen=True, eq=False)
class PreviousFrame:
    """The plan made `time_offset_s` earlier (NAVSIM v2 two-frame extended comfort)."""

    ego: EgoState
    plan: np.ndarray  # [8, 3] in the previous frame's rear-axle local frame
    time_offset_s: float = 0.5


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
    """Replacement for the PDM-Closed trajectory that normalises ego progress (EP).

    Give either `poses` ([41, 3] global rear-axle poses at 0.1 s, index 0 = now; it is simulated and scored like
    a proposal, as NAVSIM does with PDM-Closed) or `progress_m` (its raw progress along the centerline in metres,
    already multiplied by its multiplicative metrics).
    """

    poses: Optional[np.ndarray] = None
    progress_m: Optional[float] = None

    def __post_init__(self):
        if (self.poses is None) == (self.progress_m is None):
            raise ValueError("Reference: give exactly one of `poses` ([41, 3] global poses) or `progress_m` (metres).")


@dataclasses.dataclass(frozen=True, eq=False)
class NavsimScene:
    """Everything PDMS/EPDMS need for one scene (global frame, metres, radians, 0.1 s steps).

    objects: per 0.1 s step, index 0 = now; at least 41 steps (v1 TTC looks 0.9 s further, i.e. 50 steps).
    red_light_lane_connectors: per step, ids of lane connectors whose light is red (only on-route ones count,
        as in navsim's `_get_traffic_light_geometries`); empty = no red lights.
    """

    ego: EgoState
    objects: Sequence[Sequence[ObjectBox]]
    map_polygons: Sequence[MapPolygon]
    route_lane_ids: Sequence[str]
    centerline: np.ndarray  # [N, 2] or [N, 3] polyline along the route
    reference: Reference
    red_light_lane_connectors: Sequence[Sequence[str]] = ()
    vehicle: VehicleParams = VehicleParams()
    human_future: Optional[np.ndarray] = None  # [8, 3] logged ego future, local frame (v2 penalty filter)
    human_past: Optional[HumanPast] = None  # v2 history comfort
    previous_frame: Optional[PreviousFrame] = None  # v2 extended comfort
    collided_track_ids: Sequence[str] = ()  # tracks ignored from the start (empty in NAVSIM's metric cache)
    is_synthetic: bool = False  # v2: the human penalty filter applies to original scenes only


# --- geometry ------------------------------------------------------------------------------------------------


def ego_coords(states: np.ndarray, vehicle: VehicleParams) -> np.ndarray:
    """Ego box corners + center from rear-axle states. states: [..., 11] -> coords [..., 5, 2] (BBCoords order)."""
    heading = states[..., HEADING]
    cos, sin = np.cos(heading), np.sin(heading)
    rac = vehicle.rear_axle_to_center
    cx = states[..., X] + rac * cos
    cy = states[..., Y] + rac * sin
    hl, hw = vehicle.half_length, vehicle.half_width
    lon = np.array([hl, -hl, -hl, hl, 0.0])
    lat = np.array([hw, hw, -hw, -hw, 0.0])
    xs = cx[..., None] + lon * cos[..., None] - lat * sin[..., None]
    ys = cy[..., None] + lon * sin[..., None] + lat * cos[..., None]
    return np.stack([xs, ys], axis=-1)


def coords_to_polygons(coords: np.ndarray) -> np.ndarray:
    """[..., 5, 2] box coords -> array of shapely polygons (center slot closes the ring, as in navsim)."""
    ring = coords.copy()
    ring[..., CENTER, :] = ring[..., FRONT_LEFT, :]
    return shapely.polygons(ring)


# --- compiled scene structures -------------------------------------------------------------------------------


class DrivableMap:
    """Map polygons with layer tags (navsim `PDMDrivableMap`)."""

    def __init__(self, polygons: Sequence[MapPolygon]):
        self.ids: List[str] = [p.id for p in polygons]
        self.layers: List[MapLayer] = [p.layer for p in polygons]
        self.geometries = np.array([p.polygon for p in polygons], dtype=object)
        for p in polygons:
            if not isinstance(p.layer, MapLayer):
                raise TypeError(f"MapPolygon {p.id!r}: layer must be a MapLayer, got {p.layer!r}.")
        self._by_id_layer: Dict[Tuple[str, MapLayer], shapely.Polygon] = {
            (p.id, p.layer): p.polygon for p in polygons}

    def indices_of(self, layers: Sequence[MapLayer]) -> List[int]:
        return [i for i, layer in enumerate(self.layers) if layer in layers]

    def polygon(self, id_: str, layer: MapLayer) -> Optional[shapely.Polygon]:
        return self._by_id_layer.get((id_, layer))

    def points_in_polygons(self, points: np.ndarray) -> np.ndarray:
        """points: [..., 2] -> bool [n_polygons, ...]; strict interior (boundary points are outside)."""
        flat = points.reshape(-1, 2)
        out = np.zeros((len(self.geometries), len(flat)), dtype=bool)
        for i, geom in enumerate(self.geometries):
            out[i] = shapely.contains_xy(geom, flat[:, 0], flat[:, 1])
        return out.reshape((len(self.geometries),) + points.shape[:-1])

    def in_layer(self, points: np.ndarray, layer: MapLayer) -> np.ndarray:
        """points: [..., 2] -> bool [...]: point lies inside some polygon of `layer` (navsim `is_in_layer`)."""
        idx = self.indices_of([layer])
        if not idx:
            return np.zeros(points.shape[:-1], dtype=bool)
        flat = points.reshape(-1, 2)
        hit = np.zeros(len(flat), dtype=bool)
        for i in idx:
            hit |= shapely.contains_xy(self.geometries[i], flat[:, 0], flat[:, 1])
        return hit.reshape(points.shape[:-1])


@dataclasses.dataclass(frozen=True, eq=False)
class StepMap:
    """Occupancy at one step: tokens, polygons, STRtree, red-light flags, object records."""

    tokens: List[str]
    geometries: np.ndarray
    is_red_light: np.ndarray
    tree: shapely.STRtree

    def query(self, geometries: np.ndarray) -> np.ndarray:
        """[2, n_hits] array of (input index, tree index) pairs whose geometries intersect."""
        if len(self.tokens) == 0:
            return np.zeros((2, 0), dtype=np.int64)
        return self.tree.query(geometries, predicate="intersects")


class Observation:
    """Per-step STRtrees over object boxes and red-light pseudo-objects (navsim `PDMObservation`)."""

    def __init__(self, scene: NavsimScene, dmap: DrivableMap):
        n_steps = len(scene.objects)
        red = list(scene.red_light_lane_connectors)
        if red and len(red) != n_steps:
            raise ValueError(
                f"NavsimScene: red_light_lane_connectors has {len(red)} steps but objects has {n_steps}; "
                "give one list of red lane-connector ids per 0.1 s step (or none at all).")
        route = set(scene.route_lane_ids)
        self.unique_objects: Dict[str, ObjectBox] = {}
        self.steps: List[StepMap] = []
        for t in range(n_steps):
            tokens, geoms, flags = [], [], []
            for box in scene.objects[t]:
                if box.track_id in tokens:
                    raise ValueError(f"NavsimScene: track id {box.track_id!r} appears twice at step {t}.")
                tokens.append(box.track_id)
                geoms.append(box.polygon())
                flags.append(False)
                self.unique_objects.setdefault(box.track_id, box)
            for lc_id in (red[t] if red else ()):
                lc_id = str(lc_id)
                if lc_id not in route:
                    continue  # navsim only keeps red lights on route lane connectors
                poly = dmap.polygon(lc_id, MapLayer.LANE_CONNECTOR)
                if poly is None:
                    raise ValueError(
                        f"NavsimScene: red light on lane connector {lc_id!r} (step {t}) but the map has no "
                        "LANE_CONNECTOR polygon with that id.")
                tokens.append(f"{RED_LIGHT_PREFIX}_{lc_id}")
                geoms.append(poly)
                flags.append(True)
            geoms_arr = np.array(geoms, dtype=object)
            self.steps.append(StepMap(tokens, geoms_arr, np.array(flags, dtype=bool), shapely.STRtree(geoms_arr)))

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, t: int) -> StepMap:
        return self.steps[t]


def centerline_linestring(centerline: np.ndarray) -> shapely.LineString:
    pts = np.asarray(centerline, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"NavsimScene.centerline must be [N>=2, 2 or 3], got shape {pts.shape}.")
    return shapely.LineString(pts[:, :2])
