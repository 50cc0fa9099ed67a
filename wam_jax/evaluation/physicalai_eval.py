"""`python -m wam_jax eval-physicalai`: open-loop ADE / FDE of planners on a local PhysicalAI-AV copy.

Reads the dataset repo layout the dev kit reads (features.csv, clip_index.parquet, labels/egomotion chunk zips,
camera chunk zips; see data_pipelines/sources/physicalai.py) and samples like Alpamayo: t0 = 5.1 s into each clip
(or every `event_t0s` with --event-t0s), history 16 poses at 0.1 s ending at t0, the logged future 64 poses at
0.1 s (6.4 s), all in the rig frame at t0. A planner returns waypoints [T, 3] (or [K, T, 3] samples) at
0.1 ... `horizon` s.

Metrics, all from `wam_jax.metrics.trajectory` (BEV x, y L2):
  ade_3s, fde_3s, ade_4s, fde_4s   single trajectory (the first sample): mean / final L2 over the first 3 s and
                                   4 s (30 and 40 steps) - the DriveWAM paper's Table 2 metric
  min_ade, min_ade_3s              Alpamayo's best-of-K ADE over the whole horizon and its 3 s prefix (K = 1 for
                                   deterministic planners, where min_ade = ade over the horizon)
Writes <out>/scenes.csv (one row per planner and clip@t0) and summary.txt/json (means over scenes).

  python -m wam_jax eval-physicalai --src /data/PhysicalAI-AV --planners expert,constant_velocity --out out/pai
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import time
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from data_pipelines import schema
from data_pipelines.sources import physicalai as pai
from wam_jax import cli as wam_cli
from wam_jax.evaluation import benchmarks
from wam_jax.metrics import trajectory

STEP_S = 0.1
HISTORY_STEPS = 16
FUTURE_STEPS = 64
SCORE_HORIZONS_S = (3.0, 4.0)


@dataclasses.dataclass
class LoadedClip:
    clip_id: str
    t0_us: int
    bench_input: benchmarks.BenchInput
    future: np.ndarray  # [T, 3] logged future at bench_input.times_s


def _steps(seconds: float) -> int:
    return int(round(seconds / STEP_S))


def iter_clips(src: str, horizon_s: float = FUTURE_STEPS * STEP_S, use_event_t0s: bool = False,
               clip_ids: Sequence[str] = (), max_scenes: Optional[int] = None) -> Iterator[LoadedClip]:
    """Scenes (clip, t0) with the logged future over `horizon_s` at 0.1 s; clips whose egomotion does not cover
    history and future are skipped, as Alpamayo's loader does."""
    n_future = _steps(horizon_s)
    if not 1 <= n_future <= FUTURE_STEPS or abs(n_future * STEP_S - horizon_s) > 1e-9:
        raise ValueError(f"--horizon must be a multiple of 0.1 s in (0, 6.4], got {horizon_s}")
    cfg = pai.PhysicalAIConfig(name="eval", src_dir=src, use_event_t0s=use_event_t0s)
    repo = pai.PaiRepo(src)
    step_us = int(round(STEP_S * 1e6))
    ids = list(clip_ids) or sorted(repo.clip_index.index.astype(str))
    count = 0
    try:
        for clip_id in ids:
            if clip_id not in repo.clip_index.index:
                raise KeyError(f"clip {clip_id!r} is not in {src}/clip_index.parquet")
            ego = pai.Egomotion(pd.read_parquet(io.BytesIO(repo.member(clip_id, "egomotion", "egomotion"))))
            for t0 in pai.clip_t0s(repo, clip_id, cfg):
                if not ego.covers(t0 - (HISTORY_STEPS - 1) * step_us, t0 + n_future * step_us):
                    continue
                future = pai.relative_poses(ego, t0 + np.arange(1, n_future + 1, dtype=np.int64) * step_us, t0)
                history = pai.relative_poses(ego, t0 + np.arange(-(HISTORY_STEPS - 1), 1, dtype=np.int64) * step_us, t0)
                velocity = pai.ego_velocity(ego, np.array([t0], np.int64))[0]
                inp = benchmarks.BenchInput(
                    scene_id=f"{clip_id}@{t0}", times_s=np.arange(1, n_future + 1) * STEP_S, history=history,
                    history_dt=STEP_S, velocity=velocity,
                    command=int(schema.command_from_waypoints(future, cfg.lateral_threshold)),
                    logged_future=future)
                yield LoadedClip(clip_id, int(t0), inp, future)
                count += 1
                if max_scenes is not None and count >= max_scenes:
                    return
    finally:
        repo.close()


def _frames_for(src: str, clip: LoadedClip, cameras: Sequence[str]) -> np.ndarray:
    cfg = pai.PhysicalAIConfig(name="eval", src_dir=src, cameras=tuple(cameras), image_size=None,
                               history_steps=HISTORY_STEPS, future_steps=1)
    repo = pai.PaiRepo(src)
    try:
        ego = pai.Egomotion(pd.read_parquet(io.BytesIO(repo.member(clip.clip_id, "egomotion", "egomotion"))))
        return pai.make_clip(repo, clip.clip_id, clip.t0_us, ego, cfg).frames
    finally:
        repo.close()


SCENE_COLUMNS = ("planner", "clip_id", "t0_us", "ade_3s", "fde_3s", "ade_4s", "fde_4s", "min_ade", "min_ade_3s")
SUMMARY_COLUMNS = ("planner", "scenes", "ade_3s", "fde_3s", "ade_4s", "fde_4s", "min_ade", "min_ade_3s")


def score_clip(pred: np.ndarray, gt: np.ndarray) -> dict:
    """pred [K, T, 3], gt [T, 3] -> the metric row (nan where the horizon is longer than T)."""
    n_t = gt.shape[0]
    row = {}
    for h in SCORE_HORIZONS_S:
        steps = _steps(h)
        tag = f"{h:g}s"
        if steps <= n_t:
            row[f"ade_{tag}"] = float(trajectory.ade(pred[None, :1], gt[None], steps)[0, 0, 0])
            row[f"fde_{tag}"] = float(trajectory.fde(pred[None, :1], gt[None], steps)[0, 0, 0])
        else:
            row[f"ade_{tag}"] = row[f"fde_{tag}"] = float("nan")
    m = trajectory.min_ade(pred[None], gt[None], timestep_horizons=(_steps(3.0),), time_step=STEP_S)
    row["min_ade"] = float(m["min_ade"][0])
    row["min_ade_3s"] = float(m["min_ade/by_t=3.0"][0]) if "min_ade/by_t=3.0" in m else float("nan")
    return row


def evaluate(planners: dict, clips: Sequence[LoadedClip], src: str = "",
             cameras: Sequence[str] = (pai.PhysicalAIConfig.cameras)) -> tuple[list[dict], list[dict]]:
    rows: dict[str, list[dict]] = {name: [] for name in planners}
    for clip in clips:
        inp = clip.bench_input
        for name, planner in planners.items():
            if getattr(planner, "needs_frames", False) and inp.frames is None:
                inp = dataclasses.replace(inp, frames=_frames_for(src, clip, cameras), frame_dt=STEP_S)
            pred = benchmarks.plan_samples(planner, inp)
            rows[name].append({"planner": name, "clip_id": clip.clip_id, "t0_us": clip.t0_us,
                               **score_clip(pred, clip.future)})
    summary = [benchmarks.mean_rows(name, r, SUMMARY_COLUMNS[2:]) for name, r in rows.items()]
    return [row for r in rows.values() for row in r], summary


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m wam_jax eval-physicalai", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--src", required=True, help="local copy of nvidia/PhysicalAI-Autonomous-Vehicles")
    p.add_argument("--planners", default="expert,constant_velocity", help=f"comma-separated, of {sorted(benchmarks.PLANNERS)}")
    wam_cli.add_config_args(p, checkpoint_arg=True,
                            checkpoint_help="DriveWAM training workdir (for the drivewam planner)")
    p.add_argument("--horizon", type=float, default=FUTURE_STEPS * STEP_S,
                   help="seconds of future to plan and score (default 6.4; drivewam plans one 4 s chunk: use 4)")
    p.add_argument("--event-t0s", action="store_true", help="score every clip_index event_t0s instead of t0 = 5.1 s")
    p.add_argument("--clips", default="", help="comma-separated clip ids (default: all, sorted)")
    p.add_argument("--cameras", default=",".join(pai.PhysicalAIConfig.cameras), help="cameras for drivewam's frames")
    p.add_argument("--max-scenes", type=int, default=None)
    p.add_argument("--out", default="out/eval_physicalai")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.planners.split(",") if n.strip()]
    start = time.time()
    try:
        config = wam_cli.config_from_args(args, args.checkpoint, required=False)
        planners = benchmarks.build_planners(names, args.checkpoint, config)
        ids = [c for c in args.clips.split(",") if c]
        clips = list(iter_clips(args.src, args.horizon, args.event_t0s, ids, args.max_scenes))
        if not clips:
            raise ValueError(f"no scenes in {args.src}: no clip's egomotion covers 1.5 s of history and "
                             f"{args.horizon:g} s of future around t0")
        rows, summary = evaluate(planners, clips, args.src, [c for c in args.cameras.split(",") if c])
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"eval-physicalai: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    meta = {"src": args.src, "planners": names, "scenes": len(clips), "horizon_s": args.horizon,
            "event_t0s": args.event_t0s, "checkpoint": args.checkpoint, "config": args.config,
            "wall_s": round(time.time() - start, 2)}
    table = benchmarks.write_outputs(args.out, rows, SCENE_COLUMNS, summary, SUMMARY_COLUMNS, meta)
    print(f"PhysicalAI-AV open loop on {len(clips)} scene(s) of {args.src} (horizon {args.horizon:g} s; metres)\n"
          f"{table}\nwrote {args.out}/scenes.csv, summary.txt, summary.json ({meta['wall_s']} s)")
    return 0
