"""`make demo`: DriveWAM end to end on the embedded default, nothing downloaded.

  1. build a highway-env expert dataset through the real TFDS → ArrayRecord → Grain path (+ a held-out one)
  2. train a small DriveWAM with the real trainer and experiments/drivewam_highway.py
  3. drive it closed loop in highway-env on held-out seeds, beside the expert and constant velocity
  4. imagine held-out futures with the KV-cached rollout; write real-vs-imagined video and trajectory plots

    python -m wam_jax demo [--out out/demo] [--episodes 8] [--fresh] [--set key=value ...]

Reruns reuse the dataset and the finished training run in OUT (deterministic: same table); --fresh starts over.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np

from wam_jax import cli as wam_cli

EXPERIMENT = "experiments/drivewam_highway.py"
EVAL_SEED = 50_000          # held-out scenes: training clips come from seeds 0, 1, 2, ...


def _log(msg: str) -> None:
    print(msg, flush=True)


def build_datasets(config, out: str, heldout_clips: int = 2):
    """(train dataset dir, held-out dataset dir); reuses what exists."""
    import dataclasses

    from data_pipelines import builders
    from data_pipelines.sources.highway import HighwayConfig, WamHighway
    from wam_jax.experiment import Experiment
    ds = config.dataset
    # The simulator config evaluation drives with, plus noise injection for the recorded demonstrations.
    sim = dataclasses.replace(Experiment(config).sim, perturb_steering=ds.perturb_steering,
                              perturb_rate_hz=ds.perturb_rate_hz, perturb_s=ds.perturb_s)
    dirs = []
    for name, clips, seed in (("train", ds.num_clips, ds.seed), ("heldout", heldout_clips, ds.heldout_seed)):
        cfg = HighwayConfig(name=f"demo_{name}", num_clips=clips, seed=seed, num_chunks=ds.num_chunks, sim=sim)
        start = time.perf_counter()
        path = builders.build(WamHighway, cfg, os.path.join(out, "data" if name == "train" else "heldout"))
        _log(f"[data] {name}: {clips} clips → {path} ({time.perf_counter() - start:.0f} s)")
        dirs.append(path)
    return dirs


def imagine_heldout(config, params, heldout_dir: str, out: str, chunks: int = 3) -> dict:
    """Context = the first real chunk of a held-out clip; the model imagines the next `chunks` chunks with the
    KV-cached rollout. Writes real | imagined video and a trajectory plot; returns ADE/FDE of the plan."""
    import jax
    import jax.numpy as jnp
    from data_pipelines import pipeline
    from wam_jax.experiment import Experiment
    from wam_jax.models import latents
    from wam_jax.rollout.engine import chain_waypoints, plot_paths, run_rollout
    from wam_jax.tools import video_io

    exp = Experiment(config)
    clip = next(iter(pipeline.iter_clips(heldout_dir)))
    n = min(chunks + 1, len(clip.waypoints))
    per_chunk = len(clip.frames) // len(clip.waypoints)
    frames = clip.frames[: n * per_chunk][None]
    lat = latents.encode_frames(frames, config)
    wam = exp.wam
    f = wam.latent_frames_per_chunk
    lat = lat.reshape(1, n, f, *lat.shape[2:])
    norm = exp.action_norm
    actions = norm.normalize(clip.waypoints[None, :n].astype(np.float32))
    guidance = None
    if exp.guidance is not None and clip.intent is not None:
        # The recorded intent of each chunk, through the same guidance object the planner uses.
        chunk_guidance = [jnp.asarray(exp.guidance.embed(None, {"intent": [text]})[:, None]) for text in clip.intent[:n]]
        guidance = lambda c, _: chunk_guidance[c]
    engine = exp.engine()
    ego_fn = None if clip.ego_state is None else (lambda c, _: jnp.asarray(clip.ego_state[None, c:c + 1]))
    result = run_rollout(engine, params, lat[:, :1], actions[:, :1], n - 1, jax.random.key(0), guidance,
                         ego_fn=ego_fn)
    imagined = latents.decode_latents(result.video[0].reshape(-1, *result.video.shape[3:])[None], config)[0]
    real = latents.decode_latents(lat[0].reshape(-1, *lat.shape[3:])[None], config)[0]
    side = np.concatenate([real, np.full_like(real[:, :, :2], 255), imagined], axis=2)
    side = np.repeat(np.repeat(side, 4, axis=1), 4, axis=2)
    video_io.write_video(os.path.join(out, "real_vs_imagined.mp4"), side, fps=2.0)
    strip = np.concatenate(list(side[f::f]), axis=0) if len(side) > f else side[-1]
    _save_png(os.path.join(out, "real_vs_imagined.png"), strip)
    planned = norm.denormalize(result.actions[0])
    path, ref = chain_waypoints(planned), chain_waypoints(clip.waypoints[:n])
    plot_paths(os.path.join(out, "imagined_trajectory.png"), path, ref, wam.waypoints_per_chunk, n)
    gen = slice(wam.waypoints_per_chunk, None)
    err = np.linalg.norm(path[gen, :2] - ref[gen, :2], axis=-1)
    return {"chunks": n - 1, "ade_m": float(err.mean()), "fde_m": float(err[-1])}


def _save_png(path: str, image: np.ndarray) -> None:
    import imageio.v3 as iio
    iio.imwrite(path, image)


def prepare_data(config, out: str, heldout_clips: int = 2):
    """Builds (or reuses) the datasets next to config.data.data_dir and fills what the config leaves to the data
    (action statistics, PCA latent basis: `python -m data_pipelines prepare`); returns (train dir, held-out dir)."""
    from data_pipelines import prepare
    train_dir, heldout_dir = build_datasets(config, os.path.dirname(config.data.data_dir.rstrip("/")) or out,
                                            heldout_clips)
    with config.unlocked():
        config.data.data_dir = train_dir
    prepare.complete_config(config, log=_log)
    return train_dir, heldout_dir


def run(config, out: str, episodes: int, imagine: bool = True, config_name: str = EXPERIMENT,
        overrides=()) -> dict:
    """The whole pipeline on `config` into `out`; returns the closed-loop aggregates (and imagination errors)."""
    os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")     # "dummy" renders blank frames in highway-env
    from wam_jax import planners as planner_table
    from wam_jax.evaluation import closed_loop as cl
    from wam_jax.experiment import Experiment
    from wam_jax.training.trainer import Trainer

    os.makedirs(out, exist_ok=True)
    train_dir, heldout_dir = prepare_data(config, out)
    workdir = os.path.join(out, "run")

    start = time.perf_counter()
    _log(f"[train] {config.train.steps} steps, batch {config.train.batch_size} → {workdir}")
    Trainer(config, workdir).run()
    _log(f"[train] done ({time.perf_counter() - start:.0f} s)")

    exp = Experiment(config)
    sim_cfg, cl_cfg = exp.sim, exp.closed_loop
    planners = {name: planner_table.build_planner(name, sim_cfg, workdir, config)
                for name in ("expert", "constant_velocity", planner_table.LEARNED_PLANNER)}
    params, step = planners[planner_table.LEARNED_PLANNER].params, planners[planner_table.LEARNED_PLANNER].checkpoint_step
    start = time.perf_counter()
    eval_dir = os.path.join(out, "eval")
    _log(f"[eval] closed loop: {episodes} held-out seeds from {EVAL_SEED}, {cl_cfg.episode_s:g} s each")
    results = cl.evaluate(planners, episodes, EVAL_SEED, sim_cfg, cl_cfg, eval_dir, log=_log)
    cl.write_results(eval_dir, results, {"checkpoint_step": step, "config": config_name,
                                         "overrides": list(overrides), **numerics_environment()})
    _log(f"[eval] done ({time.perf_counter() - start:.0f} s)")
    summary = {"table": cl.format_table(results), "aggregates": {n: cl.aggregate(r) for n, r in results.items()}}
    if imagine:
        summary["imagination"] = imagine_heldout(config, params, heldout_dir, out)
    return summary


def numerics_environment() -> dict:
    """What the numbers depend on besides the seed: XLA:CPU sizes its thread pool from the CPUs this process may
    use, and its dot products change with it, so tables are bit-identical only for the same CPU count and
    library versions (docs/PERFORMANCE.md, determinism)."""
    import jax
    import jaxlib
    return {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__}


def verdict(aggregates: dict) -> str:
    ours, cv = aggregates["drivewam"], aggregates["constant_velocity"]
    better = ours["collision_rate"] < cv["collision_rate"] or ours["progress_m"] > cv["progress_m"]
    not_worse = ours["collision_rate"] <= cv["collision_rate"] and ours["progress_m"] >= cv["progress_m"]
    head = ("DriveWAM beats constant velocity" if better and not_worse
            else "DriveWAM does NOT beat constant velocity on collision rate and progress")
    return (f"{head} (collisions {ours['collision_rate']:.2f} vs {cv['collision_rate']:.2f}, "
            f"progress {ours['progress_m']:.0f} m vs {cv['progress_m']:.0f} m).")


@wam_cli.user_errors
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m wam_jax demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/demo")
    wam_cli.add_config_args(parser, config_default=EXPERIMENT)
    parser.add_argument("--episodes", type=int, default=8, help="held-out closed-loop episodes per planner")
    parser.add_argument("--fresh", action="store_true", help="delete OUT first")
    args = parser.parse_args(argv)
    from wam_jax.config import load_config

    if args.fresh and os.path.isdir(args.out):
        shutil.rmtree(args.out)
    t0 = time.perf_counter()
    spec = args.config + ("," if ":" in args.config else ":") + f"data_dir={os.path.join(args.out, 'data')}"
    config = load_config(spec, args.set)
    summary = run(config, args.out, args.episodes, config_name=args.config, overrides=args.set)
    imagination = summary["imagination"]
    lines = [
        "", "Closed loop in highway-env (held-out seeds)", summary["table"], "", verdict(summary["aggregates"]),
        f"Open-loop imagination on a held-out clip: {imagination['chunks']} chunks, ADE {imagination['ade_m']:.2f} m, "
        f"FDE {imagination['fde_m']:.2f} m.",
        f"Outputs in {args.out}: eval/results.txt, eval/*.mp4 + *.png (per episode), real_vs_imagined.mp4/.png, "
        f"imagined_trajectory.png, run/ (checkpoints, tensorboard).",
        f"Total {time.perf_counter() - t0:.0f} s. Numbers are bit-identical for the same seed, CPU count and "
        f"library versions: {', '.join(f'{k} {v}' for k, v in numerics_environment().items())}.",
    ]
    text = "\n".join(lines)
    _log(text)
    with open(os.path.join(args.out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
