"""The paper's studies at demo scale (`studies/paper.py`) and its KV-memory table (`studies/memory_table.py`).

    python -m wam_jax.studies run --study video_supervision|pretraining|guidance|data_scaling|all \
        --seeds 0,1,2 --steps 600 --out out/studies          # train + score every variant and seed
    python -m wam_jax.studies collect --out out/studies      # one table over everything found (mean ± sd)
    python -m wam_jax.studies rescore --out out/studies      # score finished runs again (evaluation changed)
    python -m wam_jax.studies memory-table --out out/studies/memory_table  # paper Table 5

Each study is a set of variants of experiments/drivewam_highway.py scored on the same held-out clips (open-loop
plan ADE/FDE at 4 s, imagination latent MSE; `--episodes N` adds N closed-loop seeds). At paper scale the same
ablations are arguments and overrides of experiments/drivewam_paper.py.
"""

from __future__ import annotations

import argparse
import os

from wam_jax.studies.paper import CLIP_SIZES, STUDIES, collect, run  # noqa: F401 (the package's entry points)
from wam_jax.studies.paper import rescore as run_rescore


def _ints(flag: str, text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"{flag} {text!r}: write comma-separated integers, e.g. 0,1,2")
    if not values or len(set(values)) != len(values):
        raise SystemExit(f"{flag} {text!r}: give at least one value, each once")
    return values


def _compilation_cache(path: str) -> None:
    """Every run of a study compiles the same train step and rollout programs (the params are arguments): a
    persistent compilation cache turns all but the first compile of each into a read. An explicit
    JAX_COMPILATION_CACHE_DIR wins."""
    import jax
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wam_jax.studies", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and score the variants of a study (or 'all') for each seed")
    r.add_argument("--study", required=True, choices=sorted(STUDIES) + ["all"])
    r.add_argument("--out", default="out/studies")
    r.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated (default 0,1,2)")
    r.add_argument("--steps", type=int, default=600, help="training steps per run (and per pretraining run)")
    r.add_argument("--episodes", type=int, default=0, help="closed-loop seeds per run (default: none)")
    r.add_argument("--clips", default=",".join(map(str, CLIP_SIZES)),
                   help="training-set sizes of data scaling; the largest is every other study's (default 10,20,40)")
    r.add_argument("--heldout-clips", type=int, default=12, help="held-out clips scored (4 chunk pairs each)")
    r.add_argument("--workers", type=int, default=1,
                   help="processes sharing the runs, one CPU each (on 2 cores, 2 workers train ~20%% faster)")
    r.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)     # a worker's CPU (set by --workers)
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (e.g. model.num_layers=2)")
    c = sub.add_parser("collect")
    c.add_argument("--out", default="out/studies")
    rs = sub.add_parser("rescore", help="score every finished run again with the current evaluation code")
    rs.add_argument("--out", default="out/studies")
    rs.add_argument("--episodes", type=int, default=0)
    from wam_jax.studies import memory_table
    memory_table.add_arguments(sub.add_parser("memory-table", help="full / fifo / selective KV memory, ADE/FDE"))
    args = parser.parse_args(argv)
    if getattr(args, "cpu", None) is not None:      # before jax starts: XLA sizes its thread pool from this
        os.sched_setaffinity(0, {args.cpu})
    if args.command in ("run", "rescore"):
        _compilation_cache(os.path.join(args.out, "jax_cache"))
    if args.command == "rescore":
        run_rescore(args.out, args.episodes)
    if args.command == "memory-table":
        print(memory_table.main(args))
        return 0
    if args.command == "run":
        if args.steps < 1 or args.episodes < 0 or args.heldout_clips < 1 or args.workers < 1:
            raise SystemExit("--steps, --heldout-clips and --workers must be >= 1 and --episodes >= 0")
        run(args.study, args.out, _ints("--seeds", args.seeds), args.steps, args.episodes, args.set,
            args.heldout_clips, _ints("--clips", args.clips), args.workers)
        if args.cpu is not None:     # a worker: the parent prints the table
            return 0
    print(collect(args.out))
    return 0

