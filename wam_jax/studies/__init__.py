"""The paper's studies as experiment variants, and one table of their results.

    python -m wam_jax.studies run --study guidance --out out/studies      # train + closed-loop eval per variant
    python -m wam_jax.studies collect --out out/studies                   # one table over everything found
    python -m wam_jax.studies memory-table --out out/studies/memory_table  # paper Table 5 (studies/memory_table.py)

Studies at demo scale (experiments/drivewam_highway.py, CPU): guidance on/off, selective KV memory budgets vs
the full cache (same trained model, closed loop), data scaling (number of training clips). At paper scale the
same ablations are arguments of experiments/drivewam_wan21_1_3b.py (`guidance=`, `memory=`, `init=wan|scratch`,
`clips=4k|10k|100k`); pretrained-vs-scratch needs an imported Wan checkpoint, so it has no demo-scale variant.
"""

from __future__ import annotations

import argparse
import json
import os

from wam_jax.tools import tables

STUDIES = {
    "guidance": [("guidance on", "guidance=on"), ("guidance off", "guidance=off")],
    "memory": [("full cache", "memory=full"), ("selective 3 chunks", "memory=selective")],
    "data_scaling": [("10 clips", "clips=10"), ("20 clips", "clips=20"), ("40 clips", "clips=40")],
}
EXPERIMENT = "experiments/drivewam_highway.py"
COLUMNS = (("collision", "collision_rate", "{:.2f}"), ("off-road", "off_road_rate", "{:.2f}"),
           ("progress m", "progress_m", "{:.1f}"), ("PDMS", "pdms", "{:.3f}"), ("ADE m", "ade_m", "{:.2f}"))


def variant_dir(out: str, study: str, label: str) -> str:
    return os.path.join(out, study, label.replace(" ", "_"))


def run_study(study: str, out: str, episodes: int, extra_overrides=()) -> None:
    from wam_jax import demo
    from wam_jax.config import load_config
    if study not in STUDIES:
        raise SystemExit(f"unknown study {study!r}; known: {sorted(STUDIES)}")
    for label, args in STUDIES[study]:
        target = variant_dir(out, study, label)
        data_dir = os.path.join(out, "data_" + (args.replace("=", "_") if args.startswith("clips") else "shared"))
        config = load_config(f"{EXPERIMENT}:{args},data_dir={os.path.join(data_dir, 'data')}", extra_overrides)
        summary = demo.run(config, target, episodes, imagine=False, config_name=f"{EXPERIMENT}:{args}",
                           overrides=extra_overrides)
        with open(os.path.join(target, "study.json"), "w") as f:
            json.dump({"study": study, "variant": label, "args": args,
                       "aggregates": summary["aggregates"]}, f, indent=2)


def collect(out: str) -> str:
    """One table over every study.json under `out` (the DriveWAM row of each variant)."""
    rows = []
    for root, _, files in sorted(os.walk(out)):
        if "study.json" in files:
            with open(os.path.join(root, "study.json")) as f:
                rec = json.load(f)
            agg = rec["aggregates"]["drivewam"]
            rows.append([rec["study"], rec["variant"]] + [fmt.format(agg[key]) for _, key, fmt in COLUMNS])
    if not rows:
        return f"no study results under {out!r}: run `python -m wam_jax.studies run --study NAME` first"
    return tables.format_table(["study", "variant"] + [c[0] for c in COLUMNS], rows, left_columns=2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wam_jax.studies", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--study", required=True, choices=sorted(STUDIES))
    r.add_argument("--out", default="out/studies")
    r.add_argument("--episodes", type=int, default=8)
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c = sub.add_parser("collect")
    c.add_argument("--out", default="out/studies")
    from wam_jax.studies import memory_table
    memory_table.add_arguments(sub.add_parser("memory-table", help="full / fifo / selective KV memory, ADE/FDE"))
    args = parser.parse_args(argv)
    if args.command == "memory-table":
        print(memory_table.main(args))
        return 0
    if args.command == "run":
        run_study(args.study, args.out, args.episodes, args.set)
    print(collect(args.out))
    return 0

