"""One CLI entry: `python -m wam_jax <command> [args]`.

Each command lives in its own module exposing `cli(argv: list[str]) -> int | None`; modules are imported only
when their command runs, so `--help` and light commands stay fast.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "import-wan": ("wam_jax.interop.wan_import", "Import a diffusers Wan transformer into a Flax/Orbax checkpoint."),
    "import-vae": ("wam_jax.interop.vae_import", "Import a diffusers AutoencoderKLWan into a Flax/Orbax checkpoint."),
    "train": ("wam_jax.training.trainer", "Train DriveWAM with joint flow matching."),
    "rollout": ("wam_jax.rollout.engine", "Autoregressive rollout with selective KV memory."),
    "eval": ("wam_jax.evaluation.cli", "Closed-loop / open-loop evaluation tables."),
    "eval-imagination": ("wam_jax.evaluation.imagination", "Imagined next chunk vs copy-last-frame (MSE, PSNR), plan ADE vs CV."),
    "eval-navsim": ("wam_jax.evaluation.navsim_eval", "NAVSIM v1 PDMS of planners on local OpenScene logs + nuPlan maps."),
    "eval-physicalai": ("wam_jax.evaluation.physicalai_eval", "PhysicalAI-AV open-loop ADE/FDE at 3 s and 4 s, minADE."),
    "export": ("wam_jax.interop.export", "Export a checkpoint to PyTorch (safetensors, diffusers layout)."),
    "import-drivewam": ("wam_jax.interop.drivewam_import", "Import an exported DriveWAM back into a Flax checkpoint."),
    "bench": ("wam_jax.tools.bench", "Benchmarks: step time, MFU, rollout latency."),
    "compile-check": ("wam_jax.tools.compile_check", "Compile train/rollout steps ahead of time for a TPU topology."),
    "demo": ("wam_jax.demo", "The main job end to end on the embedded default (no downloads)."),
}


def _usage() -> str:
    lines = ["usage: python -m wam_jax <command> [args]", "", "commands:"]
    lines += [f"  {name:<12} {doc}" for name, (_, doc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.cli(rest) or 0)


if __name__ == "__main__":
    from wam_jax.tools.hugepages import reexec_with_hugepages
    reexec_with_hugepages()       # XLA:CPU's step buffers on huge pages (see that module)
    sys.exit(main())
