"""Import an exported DriveWAM (the `export` command's OUT folder) back into a Flax params tree.

    python -m wam_jax.interop.drivewam_import --src export/tiny --out ckpt/tiny [--dtype float32] [--no-scan]

Float32 files come back bit for bit; a bfloat16 export comes back as exactly its bfloat16 values (or, with
--dtype float32, their exact float32 upcast). The written params checkpoint (meta kind "drivewam") can be
exported again or used to initialise training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from wam_jax import checkpoint
from wam_jax import cli as wam_cli
from wam_jax.interop import drivewam_format as fmt
from wam_jax.interop import safetensors_io
from wam_jax.interop.export import DRIVEWAM_KIND, DTYPES, action_entries
from wam_jax.interop.wan_import import WeightMismatchError, convert_wan_state, read_diffusers_config
from wam_jax.interop.wan_layout import fill_params
from wam_jax.models import wam as wam_lib
from wam_jax.models.wam import WamConfig
from wam_jax.models.wan_dit import WanConfig


def read_export_config(src: str) -> dict[str, Any]:
    path = os.path.join(src, fmt.DRIVEWAM_DIR, fmt.CONFIG_FILE)
    if not os.path.exists(path):
        hint = (f"; it is a Wan-only export: use `python -m wam_jax import-wan --src {src}/{fmt.TRANSFORMER_DIR}`"
                if os.path.isdir(os.path.join(src, fmt.TRANSFORMER_DIR)) else "")
        raise checkpoint.CheckpointError(f"no DriveWAM export at {src!r}: {path} is missing{hint}")
    with open(path) as f:
        doc = json.load(f)
    if doc.get("format") != fmt.FORMAT or doc.get("format_version", 0) > fmt.FORMAT_VERSION:
        raise checkpoint.CheckpointError(f"{path} is format {doc.get('format')!r} v{doc.get('format_version')}; "
                                         f"this version reads {fmt.FORMAT!r} up to v{fmt.FORMAT_VERSION}")
    return doc


def _convert_actions(path: str, wan: WanConfig, expected, dtype: np.dtype) -> dict:
    zeros = lambda tree: jax.tree.map(lambda s: np.zeros(s.shape, dtype), tree)
    out = {g: zeros(expected[g]) for g in wam_lib.ACTION_PARAM_GROUPS + wam_lib.EGO_PARAM_GROUPS}
    out["blocks"] = zeros(wam_lib.ego_only(expected["blocks"]))      # each block's ego-state branch
    fill_params(safetensors_io.iter_file(path), action_entries(wan), out, wan, dtype, path)
    return out


def import_exported(src: str, dtype: str | None = None,
                    scan_layers: bool | None = None) -> tuple[WanConfig, WamConfig, dict, dict[str, Any]]:
    """Reads OUT written by `export` → (WanConfig, WamConfig, params tree of numpy arrays, drivewam_config).
    dtype: parameter dtype (default: the stored one); scan_layers: block layout (default: the exported
    model's)."""
    doc = read_export_config(src)
    dtype = dtype or doc["dtype"]
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} unknown; choose one of {sorted(DTYPES)}")
    model = dict(doc["model"], param_dtype=dtype)
    if scan_layers is not None:
        model["scan_layers"] = scan_layers
    wan = WanConfig.from_config(model, f"{src}/{fmt.DRIVEWAM_DIR}/{fmt.CONFIG_FILE} model")
    wam = WamConfig.from_config(doc["wam"], f"{src}/{fmt.DRIVEWAM_DIR}/{fmt.CONFIG_FILE} wam")
    tdir = os.path.join(src, fmt.TRANSFORMER_DIR)
    stored = WanConfig.from_diffusers(read_diffusers_config(tdir)).to_diffusers()
    differ = {k: (v, stored[k]) for k, v in wan.to_diffusers().items() if stored[k] != v}
    if differ:
        raise WeightMismatchError(f"{tdir}/config.json disagrees with {fmt.CONFIG_FILE} on {differ} "
                                  "(config value, transformer value)")
    np_dtype = DTYPES[dtype]
    wan_params = convert_wan_state(safetensors_io.iter_directory(tdir, fmt.WEIGHTS_STEM), wan, np_dtype)
    expected = nn.unbox(wam_lib.abstract_params(wan, wam))
    params = {g: wan_params[g] for g in wam_lib.WAN_PARAM_GROUPS}
    own = _convert_actions(os.path.join(src, fmt.DRIVEWAM_DIR, fmt.ACTIONS_FILE), wan, expected, np_dtype)
    params["blocks"] = wam_lib.with_ego(params["blocks"], own.pop("blocks"))
    params.update(own)
    return wan, wam, params, doc


@wam_cli.user_errors
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m wam_jax.interop.drivewam_import", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="folder written by `python -m wam_jax export`")
    parser.add_argument("--out", required=True, help="output params checkpoint folder (must not exist yet)")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="parameter dtype (default: stored)")
    parser.add_argument("--no-scan", action="store_true", help="store per-layer params instead of a stacked scan")
    args = parser.parse_args(argv)
    wan, wam, params, doc = import_exported(args.src, args.dtype, False if args.no_scan else None)
    config = {k: v for k, v in doc.items() if k not in ("format", "format_version", "dtype", "source")}
    config["model"] = dict(config["model"], scan_layers=wan.scan_layers)
    checkpoint.save_params(args.out, params, {"kind": DRIVEWAM_KIND, "config": config,
                                              "source": os.path.abspath(args.src)})
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    print(f"imported DriveWAM: {wan.num_layers} layers, dim {wan.dim}, {n / 1e6:.2f}M params → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
