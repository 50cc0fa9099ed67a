"""Import a diffusers-layout Wan transformer (config.json + safetensors, sharded or not) from a local path.

    python -m wam_jax import-wan --src /path/to/Wan2.1-T2V-1.3B-Diffusers/transformer --out ckpt/wan13b

Every tensor is checked by name and shape; all problems are collected and reported together.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Iterable

import flax.linen as nn
import jax
import numpy as np

from wam_jax import checkpoint
from wam_jax import cli as wam_cli
from wam_jax.interop import safetensors_io
from wam_jax.interop.wan_layout import WeightMismatchError, fill_params, wan_entries  # noqa: F401 (re-export)
from wam_jax.models.wan_dit import WanConfig, abstract_params

KIND = "wan_transformer"


def read_diffusers_config(src: str) -> dict[str, Any]:
    path = os.path.join(src, "config.json")
    if not os.path.exists(path):
        raise checkpoint.CheckpointError(f"{src!r} holds no config.json: point --src at the diffusers 'transformer' folder")
    with open(path) as f:
        return json.load(f)


def convert_wan_state(tensors: Iterable[tuple[str, np.ndarray]], cfg: WanConfig, dtype=np.float32) -> dict:
    """diffusers tensors (name, array) → our unboxed Flax params tree (numpy), validating names and shapes."""
    out = jax.tree.map(lambda s: np.zeros(s.shape, dtype), nn.unbox(abstract_params(cfg)))
    fill_params(tensors, wan_entries(cfg), out, cfg, dtype, "Wan checkpoint")
    return out


def import_wan(src: str, out: str | None = None, dtype: str = "float32", **numerics) -> tuple[WanConfig, dict]:
    """Reads a diffusers Wan transformer directory; writes an Orbax params checkpoint to `out` if given."""
    cfg = WanConfig.from_diffusers(read_diffusers_config(src), **numerics)
    params = convert_wan_state(safetensors_io.iter_directory(src), cfg, np.dtype(jax.numpy.dtype(dtype)))
    if out is not None:
        checkpoint.save_params(out, params, {"kind": KIND, "config": cfg.to_diffusers(), "source": os.path.abspath(src),
                                             "scan_layers": cfg.scan_layers, "dtype": dtype})
    return cfg, params


def load_wan(directory: str, **numerics) -> tuple[WanConfig, Any]:
    """Loads a checkpoint written by `import_wan` (or the Wan part of an exported/trained model)."""
    meta = checkpoint.load_meta(directory, KIND)
    cfg = WanConfig.from_diffusers(meta["config"], scan_layers=meta.get("scan_layers", True), **numerics)
    params, _ = checkpoint.load_params_checkpoint(directory)
    return cfg, params


def save_wan_part(params, cfg: WanConfig, out: str, source: str) -> None:
    """Writes the Wan DiT part of DriveWAM params (no action parts, no ego-state branch) as a checkpoint
    `load_wan` reads: a DriveWAM pretrained on action-free video (`flow.action_free`) becomes the `init=wan`
    of another, exactly as an imported Wan would."""
    from wam_jax.models.wam import WAN_PARAM_GROUPS, without_ego
    wan_params = {group: without_ego(jax.device_get(params[group])) for group in WAN_PARAM_GROUPS}
    checkpoint.save_params(out, wan_params, {"kind": KIND, "config": cfg.to_diffusers(), "source": source,
                                             "scan_layers": cfg.scan_layers, "dtype": "float32"})


@wam_cli.user_errors
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m wam_jax import-wan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="diffusers transformer folder (config.json + *.safetensors)")
    parser.add_argument("--out", required=True, help="output checkpoint folder (must not exist yet)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="stored parameter dtype")
    parser.add_argument("--no-scan", action="store_true", help="store per-layer params instead of a stacked scan")
    args = parser.parse_args(argv)
    cfg, params = import_wan(args.src, args.out, args.dtype, scan_layers=not args.no_scan)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    print(f"imported Wan transformer: {cfg.num_layers} layers, dim {cfg.dim}, {n / 1e6:.2f}M params → {args.out}")
    return 0
