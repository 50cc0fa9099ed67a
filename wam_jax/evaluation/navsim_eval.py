"""`python -m wam_jax eval-navsim`: NAVSIM v1 PDMS (NC, DAC, TTC, C, EP) of planners on local OpenScene logs.

Reads the NAVSIM on-disk layout (docs/install.md of autonomousvision/navsim):
    <src>/navsim_logs/<split>/<log>.pkl            pickled list of 2 Hz frame dicts (OpenScene)
    <src>/sensor_blobs/<split>/...                 camera JPEGs (only for planners that look at frames)
    <maps>/<map_location>/<version>/map.gpkg       nuPlan GeoPackage map (default <src>/maps, or NUPLAN_MAPS_ROOT)

A scene is a window of 4 history frames (the last is "now"; its token is the scene token) and 8 future frames
(4 s). Each planner returns 8 poses (x, y, heading) at 0.5 ... 4.0 s in the rear-axle frame at "now"; it is
scored with `wam_jax.metrics.pdms` (the one scorer) against a `NavsimScene` built from the log and the map:

  ego         rear-axle pose (`ego2global_*`), `ego_dynamic_state` = body-frame vx, vy, ax, ay (steering 0)
  objects     `anns` boxes (ego frame of each frame) moved to the global frame, interpolated from 2 Hz to
              0.1 s steps (linear position and velocity, shortest-arc heading; a track missing at either end of
              an interval appears only at its own frame); up to 10 future frames (5 s) when the log has them
  map         polygons within `map_radius` of the ego: lanes_polygons (LANE), gen_lane_connectors_scaled_
              width_polygons (LANE_CONNECTOR), lane_groups_polygons (ROADBLOCK), intersections, carpark_areas,
              generic_drivable_areas; route = lanes / lane connectors of the frame's `roadblock_ids`
  centerline  baseline paths along the route: the route lane holding the ego, one predecessor, then successors
              through on-route lane connectors (`exit_lane_fid` -> `entry_lane_fid`)
  reference   the logged human future (NAVSIM uses PDM-Closed; see docs/METRICS.md): simulated and scored like a
              proposal, so EP = agent progress / max(agent, human progress) when that max exceeds 5 m

Writes <out>/scenes.csv (planner, log, scene token, nc, dac, ttc, c, ep, pdms, progress) and summary.txt/json
(means over scenes: the benchmark number is the mean PDMS).

  python -m wam_jax eval-navsim --src /data/navsim --split test --planners expert,constant_velocity --out out/navsim
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sqlite3
import sys
import time
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import shapely

from data_pipelines.sources import navsim as navsim_src
from data_pipelines import schema
from wam_jax import cli as wam_cli
from wam_jax.evaluation import benchmarks
from wam_jax.metrics import navsim_sim
from wam_jax.metrics.navsim import pdms
from wam_jax.metrics.navsim_scene import (
    EgoState, MapLayer, MapPolygon, NavsimScene, ObjectBox, Reference, STATIC_TYPES, AGENT_TYPES,
)

HISTORY_FRAMES = 4
FUTURE_FRAMES = 8          # 4 s at 2 Hz: the plan horizon
MAX_FUTURE_FRAMES = 10     # objects up to 5 s (v1 TTC looks 0.9 s past 4 s)
FRAME_DT = 0.5
STEPS_PER_FRAME = 5        # 0.1 s simulation steps per 2 Hz frame
PLAN_TIMES = np.arange(1, FUTURE_FRAMES + 1) * FRAME_DT

GPKG_LAYERS = {  # nuPlan GeoPackage layer -> (MapLayer, id column)
    "lanes_polygons": (MapLayer.LANE, "fid"),
    "gen_lane_connectors_scaled_width_polygons": (MapLayer.LANE_CONNECTOR, "lane_connector_fid"),
    "lane_groups_polygons": (MapLayer.ROADBLOCK, "fid"),
    "intersections": (MapLayer.INTERSECTION, "fid"),
    "carpark_areas": (MapLayer.CARPARK_AREA, "fid"),
    "generic_drivable_areas": (MapLayer.DRIVABLE_AREA, "fid"),
}


# ----------------------------------------------------------------------------------------------------------------
# nuPlan GeoPackage map (sqlite + GeoPackage binary geometries; no geopandas / GDAL needed)


def gpkg_geometry(blob: bytes):
    """GeoPackage binary geometry -> shapely geometry (header 'GP', version, flags, srs_id, envelope, WKB)."""
    if blob is None or len(blob) < 8 or blob[:2] != b"GP":
        raise ValueError("not a GeoPackage geometry blob (missing 'GP' magic)")
    flags = blob[3]
    envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}.get((flags >> 1) & 0x7)
    if envelope is None:
        raise ValueError(f"GeoPackage geometry has an invalid envelope code {(flags >> 1) & 0x7}")
    return shapely.from_wkb(blob[8 + envelope:])


class NuplanMap:
    """The layers of one nuPlan map.gpkg that the PDM scorer needs, in the map's projected (metric) frame."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise FileNotFoundError(f"nuPlan map {path} not found")
        self.path = path
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            self._transform = self._projection(con, tables)
            self.polygons: dict[str, list[tuple[str, Any]]] = {}
            for layer in GPKG_LAYERS:
                self.polygons[layer] = self._read(con, tables, layer, GPKG_LAYERS[layer][1])
            self.lane_group = {str(fid): str(g) for fid, g in self._rows(con, tables, "lanes_polygons",
                                                                       ("fid", "lane_group_fid"))}
            self.connectors = [tuple(str(v) for v in r) for r in self._rows(
                con, tables, "lane_connectors", ("fid", "exit_lane_fid", "entry_lane_fid", "lane_group_connector_fid"))]
            self.baselines: dict[tuple[str, str], np.ndarray] = {}
            for lane, conn, geom in self._rows(con, tables, "baseline_paths", ("lane_fid", "lane_connector_fid", "geom")):
                line = self._transform(gpkg_geometry(geom))
                key = ("lane", str(lane)) if lane is not None else ("connector", str(conn))
                self.baselines[key] = shapely.get_coordinates(line)
        finally:
            con.close()

    @staticmethod
    def _rows(con, tables, table, columns):
        if table not in tables:
            return []
        return con.execute(f'SELECT {", ".join(columns)} FROM "{table}"').fetchall()

    def _projection(self, con, tables):
        """Identity when the layers are stored in a projected / undefined Cartesian frame, else a pyproj
        transform to the map's `projectedCoordSystem` (meta table), as nuPlan's GPKGMapsDB does."""
        srs = set()
        if "gpkg_geometry_columns" in tables:
            srs = {r[0] for r in con.execute("SELECT srs_id FROM gpkg_geometry_columns")}
        geographic = set()
        if srs and "gpkg_spatial_ref_sys" in tables:
            for srs_id, definition in con.execute("SELECT srs_id, definition FROM gpkg_spatial_ref_sys"):
                if srs_id in srs and str(definition).upper().startswith("GEOGCS"):
                    geographic.add(srs_id)
        if not geographic:
            return lambda g: g
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
        target = meta.get("projectedCoordSystem")
        if not target:
            raise ValueError(f"{self.path}: layers are geographic (srs {sorted(geographic)}) but the meta table has "
                             "no projectedCoordSystem to project them to")
        try:
            from pyproj import Transformer
        except ImportError as err:
            raise ImportError(f"{self.path}: layers are in geographic coordinates; projecting them to {target} "
                              "needs pyproj (pip install pyproj)") from err
        tf = Transformer.from_crs("EPSG:4326", target, always_xy=True)
        return lambda g: shapely.transform(g, lambda xy: np.stack(tf.transform(xy[:, 0], xy[:, 1]), -1))

    def _read(self, con, tables, layer, id_col):
        out = []
        for ident, geom in self._rows(con, tables, layer, (id_col, "geom")):
            out.append((str(ident), self._transform(gpkg_geometry(geom))))
        return out

    def map_polygons(self, center_xy, radius: float) -> list[MapPolygon]:
        """MapPolygons within `radius` m of `center_xy` (navsim builds its drivable map within map_radius)."""
        disk = shapely.Point(float(center_xy[0]), float(center_xy[1])).buffer(radius)
        out = []
        for layer, (map_layer, _) in GPKG_LAYERS.items():
            for ident, geom in self.polygons[layer]:
                if geom.intersects(disk):
                    for part in getattr(geom, "geoms", [geom]):
                        out.append(MapPolygon(ident, map_layer, part))
        return out

    def route_lane_ids(self, roadblock_ids: Sequence) -> list[str]:
        """Lanes of the route roadblocks and lane connectors of the route roadblock connectors."""
        route = {str(r) for r in roadblock_ids}
        lanes = [lane for lane, group in self.lane_group.items() if group in route]
        conns = [fid for fid, _, _, group in self.connectors if group in route]
        return lanes + conns

    def centerline(self, ego_xy, route_ids: Sequence[str], max_hops: int = 8) -> np.ndarray:
        """Baseline paths along the route through the ego's lane ([N, 2])."""
        route = set(route_ids)
        lanes = sorted(i for i in route if ("lane", i) in self.baselines)  # sorted: ties break the same way
        if not lanes:
            raise ValueError(f"{self.path}: no baseline path for any route lane {sorted(route)}")
        point = shapely.Point(float(ego_xy[0]), float(ego_xy[1]))
        start = min(lanes, key=lambda i: shapely.LineString(self.baselines[("lane", i)]).distance(point))
        pieces = []
        preds = sorted(c for c in self.connectors if c[2] == start and c[0] in route)
        if preds and ("lane", preds[0][1]) in self.baselines:
            pieces += [self.baselines[("lane", preds[0][1])], self.baselines.get(("connector", preds[0][0]))]
        pieces.append(self.baselines[("lane", start)])
        lane = start
        for _ in range(max_hops):
            succ = sorted(c for c in self.connectors if c[1] == lane and c[0] in route)
            if not succ:
                break
            fid, _, entry, _ = succ[0]
            pieces.append(self.baselines.get(("connector", fid)))
            if ("lane", entry) not in self.baselines:
                break
            pieces.append(self.baselines[("lane", entry)])
            lane = entry
        pts = np.concatenate([p[:, :2] for p in pieces if p is not None and len(p)], axis=0)
        keep = np.concatenate([[True], np.any(np.abs(np.diff(pts, axis=0)) > 1e-9, axis=1)])
        return pts[keep]


def find_map(maps_root: str, location: str) -> str:
    """<maps_root>/<location>/<version>/map.gpkg (version from nuplan-maps-v1.0.json when present)."""
    index = os.path.join(maps_root, "nuplan-maps-v1.0.json")
    if os.path.exists(index):
        with open(index) as f:
            version = (json.load(f).get(location) or {}).get("version")
        if version:
            return os.path.join(maps_root, location, version, "map.gpkg")
    found = sorted(glob.glob(os.path.join(maps_root, location, "*", "map.gpkg")))
    if not found:
        raise FileNotFoundError(f"no nuPlan map for {location!r} under {maps_root} (expected "
                                f"{maps_root}/{location}/<version>/map.gpkg)")
    return found[-1]


# ----------------------------------------------------------------------------------------------------------------
# Scenes from OpenScene logs


@dataclasses.dataclass
class LoadedScene:
    log_name: str
    token: str
    scene: NavsimScene
    bench_input: benchmarks.BenchInput
    frames_ref: tuple  # (frames list, current index, sensor root) for planners that need images


def _rotate(x, y, h):
    c, s = np.cos(h), np.sin(h)
    return c * x - s * y, s * x + c * y


def _global_boxes(frame: dict) -> dict[str, tuple]:
    """track token -> (category, x, y, heading, length, width, vx, vy) in the global frame."""
    pose = navsim_src.global_pose(frame)
    anns = frame.get("anns") or {}
    boxes = np.asarray(anns.get("gt_boxes", np.zeros((0, 7))), np.float64).reshape(-1, 7)
    names = list(anns.get("gt_names", []))
    tokens = list(anns.get("track_tokens", []))
    vel = np.asarray(anns.get("gt_velocity_3d", np.zeros((len(boxes), 3))), np.float64)
    vel = vel.reshape(len(boxes), 3) if vel.size or len(boxes) else np.zeros((0, 3))
    if not (len(names) == len(tokens) == len(boxes) == len(vel)):
        raise ValueError(f"frame {frame.get('token')}: anns gt_boxes/gt_names/track_tokens/gt_velocity_3d lengths "
                         f"differ ({len(boxes)}, {len(names)}, {len(tokens)}, {len(vel)})")
    out = {}
    for b, name, tok, v in zip(boxes, names, tokens, vel):
        if name not in AGENT_TYPES and name not in STATIC_TYPES:
            raise ValueError(f"frame {frame.get('token')}: unknown object class {name!r}")
        dx, dy = _rotate(b[0], b[1], pose[2])
        vx, vy = _rotate(v[0], v[1], pose[2])
        out[str(tok)] = (name, pose[0] + dx, pose[1] + dy, pose[2] + b[6], b[3], b[4], vx, vy)
    return out


def interpolate_objects(frames: Sequence[dict]) -> list[list[ObjectBox]]:
    """2 Hz frames -> per-0.1 s lists of ObjectBox (len = 5 (len(frames) - 1) + 1)."""
    per_frame = [_global_boxes(f) for f in frames]
    steps: list[list[ObjectBox]] = []
    for k in range(len(frames)):
        last = k == len(frames) - 1
        for sub in range(1 if last else STEPS_PER_FRAME):
            a = sub / STEPS_PER_FRAME
            boxes = []
            for tok, b0 in per_frame[k].items():
                if sub == 0:
                    vals = b0
                elif tok in per_frame[k + 1]:
                    b1 = per_frame[k + 1][tok]
                    dh = np.arctan2(np.sin(b1[3] - b0[3]), np.cos(b1[3] - b0[3]))
                    vals = (b0[0],) + tuple(b0[i] + a * (b1[i] - b0[i]) for i in (1, 2)) + (b0[3] + a * dh,) + \
                        tuple(b0[i] + a * (b1[i] - b0[i]) for i in (4, 5, 6, 7))
                else:
                    continue
                boxes.append(ObjectBox(tok, vals[0], *(float(v) for v in vals[1:])))
            steps.append(boxes)
    return steps


def make_scene(frames: list[dict], i: int, nuplan_map: NuplanMap, map_radius: float = 100.0) -> tuple:
    """(NavsimScene, BenchInput) for the scene whose current frame is frames[i]."""
    cur = frames[i]
    poses = np.stack([navsim_src.global_pose(f) for f in frames])
    dyn = np.asarray(cur.get("ego_dynamic_state", [0, 0, 0, 0]), np.float64)
    ego = EgoState(float(poses[i, 0]), float(poses[i, 1]), float(poses[i, 2]), vx=float(dyn[0]), vy=float(dyn[1]),
                   ax=float(dyn[2]), ay=float(dyn[3]))
    future = schema.to_local_frame(poses[i + 1:i + 1 + FUTURE_FRAMES], poses[i])
    history = schema.to_local_frame(poses[i - HISTORY_FRAMES + 1:i + 1], poses[i])
    last = min(len(frames) - 1, i + MAX_FUTURE_FRAMES)
    route = nuplan_map.route_lane_ids(cur.get("roadblock_ids") or [])
    scene = NavsimScene(
        ego=ego, objects=interpolate_objects(frames[i:last + 1]),
        map_polygons=nuplan_map.map_polygons(poses[i, :2], map_radius), route_lane_ids=route,
        centerline=nuplan_map.centerline(poses[i, :2], route),
        reference=Reference(poses=navsim_sim.plan_to_reference_poses(ego, future)), human_future=future)
    inp = benchmarks.BenchInput(
        scene_id=str(cur["token"]), times_s=PLAN_TIMES, history=history, history_dt=FRAME_DT,
        velocity=dyn[:2], command=navsim_src.command_index(cur.get("driving_command")), logged_future=future)
    return scene, inp


def iter_scenes(src: str, split: str, maps_root: Optional[str] = None, frame_interval: int = 1,
                max_scenes: Optional[int] = None, map_radius: float = 100.0) -> Iterator[LoadedScene]:
    """Scenes of every log in <src>/navsim_logs/<split> (sorted), windows every `frame_interval` frames whose
    current frame has route roadblocks (NAVSIM's has_route filter)."""
    cfg = navsim_src.NavsimConfig(name="eval", src_dir=src, log_split=split, history_frames=HISTORY_FRAMES,
                                  future_poses=FUTURE_FRAMES, frame_interval=frame_interval, require_route=True)
    maps_root = maps_root or os.environ.get("NUPLAN_MAPS_ROOT") or os.path.join(src, "maps")
    maps: dict[str, NuplanMap] = {}
    sensor_root = os.path.join(src, "sensor_blobs", split)
    count = 0
    for path in navsim_src.list_logs(cfg):
        frames = navsim_src.load_log(path)
        for start in navsim_src.iter_windows(frames, cfg):
            i = start + HISTORY_FRAMES - 1
            location = str(frames[i].get("map_location", ""))
            if location not in maps:
                maps[location] = NuplanMap(find_map(maps_root, location))
            scene, inp = make_scene(frames, i, maps[location], map_radius)
            yield LoadedScene(str(frames[i].get("log_name", os.path.basename(path))), inp.scene_id, scene, inp,
                              (frames, i, sensor_root))
            count += 1
            if max_scenes is not None and count >= max_scenes:
                return


def _frames_for(ref: tuple, camera: str = "front") -> np.ndarray:
    frames, i, sensor_root = ref
    cfg = navsim_src.NavsimConfig(name="eval", camera=camera, image_size=None)
    return np.stack([navsim_src.camera_view(f, sensor_root, cfg)[0] for f in frames[i - HISTORY_FRAMES + 1:i + 1]])


# ----------------------------------------------------------------------------------------------------------------
# Scoring


SCENE_COLUMNS = ("planner", "log_name", "token", "nc", "dac", "ttc", "c", "ep", "pdms", "progress_m")
SUMMARY_COLUMNS = ("planner", "scenes", "nc", "dac", "ttc", "c", "ep", "pdms")


def score_scene(planner, loaded: LoadedScene) -> dict:
    inp = loaded.bench_input
    if getattr(planner, "needs_frames", False) and inp.frames is None:
        inp = dataclasses.replace(inp, frames=_frames_for(loaded.frames_ref), frame_dt=FRAME_DT)
    plan = benchmarks.plan_samples(planner, inp)[0]
    r = pdms(loaded.scene, plan)
    return {"planner": planner.name, "log_name": loaded.log_name, "token": loaded.token, "nc": r.nc, "dac": r.dac,
            "ttc": r.ttc, "c": r.c, "ep": r.ep, "pdms": r.score, "progress_m": r.progress_m}


def evaluate(planners: dict, scenes: Sequence[LoadedScene]) -> tuple[list[dict], list[dict]]:
    """(per-scene rows, per-planner summary rows = means over scenes)."""
    rows = {name: [score_scene(p, s) for s in scenes] for name, p in planners.items()}
    summary = [benchmarks.mean_rows(name, r, SUMMARY_COLUMNS[2:]) for name, r in rows.items()]
    return [row for r in rows.values() for row in r], summary


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m wam_jax eval-navsim", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--src", required=True, help="NAVSIM data root holding navsim_logs/ and sensor_blobs/")
    p.add_argument("--split", default="test", help="navsim_logs/<split> (navtest = test)")
    p.add_argument("--maps", default=None, help="nuPlan maps root (default $NUPLAN_MAPS_ROOT or <src>/maps)")
    p.add_argument("--planners", default="expert,constant_velocity", help=f"comma-separated, of {sorted(benchmarks.PLANNERS)}")
    wam_cli.add_config_args(p, checkpoint_arg=True,
                            checkpoint_help="DriveWAM training workdir (for the drivewam planner)")
    p.add_argument("--frame-interval", type=int, default=1, help="stride between scenes in frames")
    p.add_argument("--max-scenes", type=int, default=None)
    p.add_argument("--out", default="out/eval_navsim")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.planners.split(",") if n.strip()]
    start = time.time()
    try:
        config = wam_cli.config_from_args(args, args.checkpoint, required=False)
        planners = benchmarks.build_planners(names, args.checkpoint, config)
        scenes = list(iter_scenes(args.src, args.split, args.maps, args.frame_interval, args.max_scenes))
        if not scenes:
            raise ValueError(f"no scenes in {args.src}/navsim_logs/{args.split} (every window lacks route roadblocks "
                             f"or is shorter than {HISTORY_FRAMES + FUTURE_FRAMES} frames)")
        rows, summary = evaluate(planners, scenes)
    except (KeyError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"eval-navsim: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    meta = {"src": args.src, "split": args.split, "planners": names, "scenes": len(scenes),
            "checkpoint": args.checkpoint, "config": args.config, "wall_s": round(time.time() - start, 2)}
    table = benchmarks.write_outputs(args.out, rows, SCENE_COLUMNS, summary, SUMMARY_COLUMNS, meta)
    print(f"NAVSIM v1 PDMS on {len(scenes)} scene(s) of {args.src} ({args.split})\n{table}\n"
          f"wrote {args.out}/scenes.csv, summary.txt, summary.json ({meta['wall_s']} s)")
    return 0
