"""`python -m wam_jax eval`: closed-loop evaluation of planners in highway-env.

Examples:
  python -m wam_jax eval --planners expert,constant_velocity --episodes 10 --seed 0 --out out/eval
  python -m wam_jax eval --config experiments/FILE.py:arg=1 --set sim.vehicles=20 --checkpoint ckpt/

An experiment config may hold a `sim` section (fields of `HighwaySimConfig`) and a `closed_loop` section (fields
of `ClosedLoopConfig`); command-line flags override both. `--checkpoint` evaluates the learned planner
("drivewam", see `wam_jax.planners.PLANNERS`) too.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from wam_jax import cli as wam_cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m wam_jax eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--planners", default="expert,constant_velocity",
                   help="comma-separated planner names (see wam_jax.planners.PLANNERS)")
    p.add_argument("--episodes", type=int, default=5, help="episodes per planner (seeds seed..seed+episodes-1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/eval", help="output folder: results.txt/json, mp4 videos, png plots")
    wam_cli.add_config_args(p, checkpoint_arg=True,
                            checkpoint_help="training workdir of the learned (drivewam) planner; its saved config.json "
                                            "is the default --config")
    p.add_argument("--episode-s", type=float, default=None, help="seconds per episode")
    p.add_argument("--replan-s", type=float, default=None, help="seconds between replans")
    p.add_argument("--intent", choices=("expert", "scene"), default=None, help="where the driving command comes from")
    p.add_argument("--vehicles", type=int, default=None, help="other vehicles in the scene")
    p.add_argument("--no-ade", action="store_true", help="skip the expert rollouts used for ADE (faster)")
    p.add_argument("--no-video", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--workers", type=int, default=None,
                   help="processes sharing the seeds, one CPU each (0: one per CPU; default: the config's)")
    return p


@wam_cli.user_errors
def cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from wam_jax import planners as planner_table
    from wam_jax.evaluation import closed_loop as cl
    from wam_jax.sim import highway as hw

    sim_cfg, cl_cfg = hw.HighwaySimConfig(), cl.ClosedLoopConfig()
    experiment = wam_cli.config_from_args(args, run_dir=args.checkpoint, required=False)
    if experiment is not None:
        from wam_jax.experiment import Experiment

        built = Experiment(experiment)
        sim_cfg, cl_cfg = built.sim, built.closed_loop

    if args.vehicles is not None:
        sim_cfg = dataclasses.replace(sim_cfg, vehicles=args.vehicles)
    flags = {"episode_s": args.episode_s, "replan_s": args.replan_s, "intent_source": args.intent,
             "workers": args.workers}
    cl_cfg = dataclasses.replace(cl_cfg, **{k: v for k, v in flags.items() if v is not None})
    if args.no_ade:
        cl_cfg = dataclasses.replace(cl_cfg, expert_ade=False)
    if args.no_video:
        cl_cfg = dataclasses.replace(cl_cfg, video=False)
    if args.no_plots:
        cl_cfg = dataclasses.replace(cl_cfg, plots=False)

    names = [n.strip() for n in args.planners.split(",") if n.strip()]
    if args.checkpoint is not None:
        if not os.path.exists(args.checkpoint):
            print(f"eval: checkpoint folder {args.checkpoint!r} does not exist", file=sys.stderr)
            return 2
        if planner_table.LEARNED_PLANNER not in names:
            names.append(planner_table.LEARNED_PLANNER)
    if not names or args.episodes < 1:
        print("eval: need at least one planner and --episodes >= 1", file=sys.stderr)
        return 2
    try:
        planners = {n: planner_table.build_planner(n, sim_cfg, args.checkpoint, experiment) for n in names}
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"eval: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2

    print(f"eval: planners {names}, {args.episodes} episode(s) from seed {args.seed}, {cl_cfg.episode_s:g} s each, "
          f"replan every {cl_cfg.replan_s:g} s, intent from {cl_cfg.intent_source} -> {args.out}")
    start = time.time()
    if cl_cfg.workers != 1:      # each worker process builds its own (they were built here to check them)
        planners = names
    results = cl.evaluate(planners, args.episodes, args.seed, sim_cfg, cl_cfg, out_dir=args.out,
                          checkpoint=args.checkpoint, config=experiment, log=print)
    meta = {"planners": names, "episodes": args.episodes, "seed": args.seed, "checkpoint": args.checkpoint,
            "config": args.config, "overrides": args.set, "sim": dataclasses.asdict(sim_cfg),
            "closed_loop": dataclasses.asdict(cl_cfg), "wall_s": round(time.time() - start, 2)}
    table = cl.write_results(args.out, results, meta)
    print()
    print(table)
    print(f"\nwrote {os.path.join(args.out, 'results.txt')}, results.json, videos and plots ({meta['wall_s']} s)")
    return 0
