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
from wam_jax.tools import tables

EXPERIMENT = "experiments/drivewam_highway.py"
EVAL_SEED = 50_000          # held-out scenes: training clips come from seeds 0, 1, 2, ...
PLANNERS = ("expert", "constant_velocity", "idm_lane_keep", "drivewam")


def _log(msg: str) -> None:
    print(msg, flush=True)


def build_dataset(config, name: str, clips: int, seed: int, path: str) -> str:
    """One highway-env expert dataset of `clips` clips (clip i simulated from seed + i) under `path`, with the
    simulator evaluation drives with plus the config's noise injection; reuses what exists. Returns its dir."""
    import dataclasses

    from data_pipelines import builders
    from data_pipelines.sources.highway import HighwayConfig, WamHighway
    from wam_jax.experiment import Experiment
    ds = config.dataset
    noise = {k: v for k, v in ds.items() if k.startswith(("perturb_", "recovery_"))}
    sim = dataclasses.replace(Experiment(config).sim, **noise)
    cfg = HighwayConfig(name=f"demo_{name}", num_clips=clips, seed=seed, num_chunks=ds.num_chunks, sim=sim)
    start = time.perf_counter()
    built = builders.build(WamHighway, cfg, path)
    _log(f"[data] {name}: {clips} clips → {built} ({time.perf_counter() - start:.0f} s)")
    return built


def build_datasets(config, out: str):
    """(train dataset dir, held-out dataset dir) under `out`; reuses what exists."""
    ds = config.dataset
    return (build_dataset(config, "train", ds.num_clips, ds.seed, os.path.join(out, "data")),
            build_dataset(config, "heldout", ds.heldout_clips, ds.heldout_seed, os.path.join(out, "heldout")))


def imagine_heldout(config, params, heldout_dir: str, out: str) -> dict:
    """Imagination on every chunk pair of the held-out clips (`evaluation.imagination`: model vs copy-last-frame,
    latent MSE and pixel PSNR per second ahead, open-loop plan ADE vs constant velocity); writes the first pairs'
    real | imagined | copy-last frames as real_vs_imagined.png/.mp4."""
    from data_pipelines import pipeline
    from wam_jax.evaluation import imagination
    from wam_jax.tools import video_io

    clips = list(pipeline.iter_clips(heldout_dir))
    result = imagination.evaluate(config, params, clips)
    ex = result.pop("example")
    gap = lambda a: np.full_like(a[:, :, :2], 255)
    side = np.concatenate([ex["real"], gap(ex["real"]), ex["model"], gap(ex["real"]), ex["model_mean"],
                           gap(ex["real"]), ex["copy_last"]], axis=2)
    side = np.repeat(np.repeat(side, 4, axis=1), 4, axis=2)            # [F, H, W, 3], one row per second ahead
    video_io.write_video(os.path.join(out, "real_vs_imagined.mp4"), side, fps=1.0)
    _save_png(os.path.join(out, "real_vs_imagined.png"), np.concatenate(list(side), axis=0))
    tables.write_json(os.path.join(out, "imagination.json"), result)
    return result


def _save_png(path: str, image: np.ndarray) -> None:
    import imageio.v3 as iio
    iio.imwrite(path, image)


def prepare_data(config, out: str):
    """Builds (or reuses) the datasets next to config.data.data_dir and fills what the config leaves to the data
    (action statistics, PCA latent basis: `python -m data_pipelines prepare`); returns (train dir, held-out dir)."""
    from data_pipelines import prepare
    train_dir, heldout_dir = build_datasets(config, os.path.dirname(config.data.data_dir.rstrip("/")) or out)
    with config.unlocked():
        config.data.data_dir = train_dir
    prepare.complete_config(config, log=_log)
    return train_dir, heldout_dir


def run(config, out: str, episodes: int, imagine: bool = True, config_name: str = EXPERIMENT,
        overrides=()) -> dict:
    """The whole pipeline on `config` into `out`; returns the closed-loop aggregates (and imagination errors)."""
    os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")     # "dummy" renders blank frames in highway-env
    from wam_jax.evaluation import closed_loop as cl
    from wam_jax.experiment import Experiment
    from wam_jax.rollout.engine import load_trained_params
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
    params, step = load_trained_params(workdir, config)
    start = time.perf_counter()
    eval_dir = os.path.join(out, "eval")
    _log(f"[eval] closed loop: {episodes} held-out seeds from {EVAL_SEED}, {cl_cfg.episode_s:g} s each")
    results = cl.evaluate(list(PLANNERS), episodes, EVAL_SEED, sim_cfg, cl_cfg, eval_dir, workdir, config, log=_log)
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


def targets(aggregates: dict, imagination: dict | None) -> list[tuple[str, bool, str]]:
    """The issue's targets for the demo, each (name, met, measured values)."""
    ours, cv, expert = aggregates["drivewam"], aggregates["constant_velocity"], aggregates["expert"]
    idm = aggregates.get("idm_lane_keep")
    n = ours["episodes"]
    rows = [
        ("collisions <= expert + 1 episode", ours["collision_rate"] * n <= expert["collision_rate"] * n + 1,
         f"{ours['collision_rate'] * n:.0f} vs expert {expert['collision_rate'] * n:.0f} of {n}"),
        ("off-road <= 0.1", ours["off_road_rate"] <= 0.1, f"{ours['off_road_rate']:.2f}"),
        ("progress >= 0.95 x expert", ours["progress_m"] >= 0.95 * expert["progress_m"],
         f"{ours['progress_m']:.0f} m vs {0.95 * expert['progress_m']:.0f} m"),
        ("PDMS >= 0.85", ours["pdms"] >= 0.85, f"{ours['pdms']:.3f}"),
        ("PDMS > constant velocity" + (" and IDM lane keeping" if idm else ""),
         ours["pdms"] > cv["pdms"] and (idm is None or ours["pdms"] > idm["pdms"]),
         f"{ours['pdms']:.3f} vs {cv['pdms']:.3f}" + (f" / {idm['pdms']:.3f}" if idm else "")),
    ]
    if imagination:
        plan = imagination["plan_ade_m"]
        if "constant_velocity" in plan:
            rows.append((f"open-loop ADE@{imagination['plan_horizon_s']:g}s < constant velocity",
                         plan["model"] < plan["constant_velocity"],
                         f"{plan['model']:.2f} m vs {plan['constant_velocity']:.2f} m"))
        offsets = imagination["offsets_s"]
        for o in (1.0, 4.0):
            if not any(abs(o - x) < 1e-6 for x in offsets):
                continue
            i = min(range(len(offsets)), key=lambda j: abs(offsets[j] - o))
            m, c = imagination["latent_mse"], imagination["psnr_db"]
            rows.append((f"imagination latent MSE @{o:g}s < copy-last-frame", m["model"][i] < m["copy_last"][i],
                         f"{m['model'][i]:.4f} vs {m['copy_last'][i]:.4f} (mean estimate {m['model_mean'][i]:.4f})"))
            rows.append((f"imagination PSNR @{o:g}s > copy-last-frame", c["model"][i] > c["copy_last"][i],
                         f"{c['model'][i]:.2f} vs {c['copy_last'][i]:.2f} dB (mean estimate "
                         f"{c['model_mean'][i]:.2f}, codec ceiling {c['codec'][i]:.2f})"))
    return rows


def format_targets(rows) -> str:
    return tables.format_table(["target", "met", "measured"], [[name, "yes" if ok else "NO", value]
                                                              for name, ok, value in rows])


@wam_cli.user_errors
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m wam_jax demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/demo")
    wam_cli.add_config_args(parser, config_default=EXPERIMENT)
    parser.add_argument("--episodes", type=int, default=16, help="held-out closed-loop episodes per planner")
    parser.add_argument("--fresh", action="store_true", help="delete OUT first")
    args = parser.parse_args(argv)
    from wam_jax.config import load_config

    if args.fresh and os.path.isdir(args.out):
        shutil.rmtree(args.out)
    t0 = time.perf_counter()
    spec = args.config + ("," if ":" in args.config else ":") + f"data_dir={os.path.join(args.out, 'data')}"
    config = load_config(spec, args.set)
    summary = run(config, args.out, args.episodes, config_name=args.config, overrides=args.set)
    from wam_jax.evaluation import imagination as imagination_lib
    imagination = summary["imagination"]
    lines = [
        "", "Closed loop in highway-env (held-out seeds)", summary["table"], "",
        f"Imagination on held-out clips ({imagination['pairs']} chunk pairs: one real chunk -> the next 4 s; "
        f"model = a {imagination['video_steps']}-step sample, model_mean = its one-step mean estimate)",
        imagination_lib.format_table(imagination), "", imagination_lib.plan_line(imagination), "",
        "Targets (issue 17)", format_targets(targets(summary["aggregates"], imagination)), "",
        f"Outputs in {args.out}: eval/results.txt, eval/*.mp4 + *.png (per episode), real_vs_imagined.mp4/.png "
        f"(rows: 1 s ... 4 s ahead; columns: real | sample | mean | copy-last), imagination.json, "
        f"run/ (checkpoints, tensorboard).",
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
