"""Import a diffusers `AutoencoderKLWan` (Wan 2.1 or Wan 2.2 VAE) from a local folder into a Flax checkpoint.

    python -m wam_jax import-vae --src /path/to/Wan2.1-T2V-1.3B-Diffusers/vae --out ckpt/wan21_vae

The folder holds config.json and diffusion_pytorch_model.safetensors (or a sharded *.safetensors.index.json).
Every tensor is checked by name and shape; all problems are collected and reported in one error.

Name correspondence (flax path <-> diffusers key): path parts joined by ".", a trailing "_<n>" becomes ".<n>",
the per-frame conv inside WanResample is "resample" here and "resample.1" (an nn.Sequential slot) there, and
"kernel" is "weight". Layouts: conv kernels [*window, I, O] <- torch [O, I, *window]; RMS-norm gamma [C] <-
torch [C, 1, 1, 1] (residual blocks, norm_out) or [C, 1, 1] (attention norm).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any, Iterable, Mapping

import jax
import numpy as np
from flax import traverse_util

from wam_jax import checkpoint
from wam_jax import cli as wam_cli
from wam_jax.interop import safetensors_io
from wam_jax.models.vae import WanVAEConfig, abstract_params

KIND = "wan_vae"
_STEM = "diffusion_pytorch_model"


class VAEWeightMismatchError(ValueError):
    """Checkpoint tensors do not match the VAE config: lists every missing, unexpected and mis-shaped tensor."""


def torch_key(path: tuple[str, ...]) -> str:
    """Flax param path -> diffusers state-dict key."""
    parts = []
    for part in path[:-1]:
        if part == "resample":
            parts.append("resample.1")
        else:
            parts.append(re.sub(r"_(\d+)$", r".\1", part))
    parts.append({"kernel": "weight"}.get(path[-1], path[-1]))
    return ".".join(parts)


def torch_shape(path: tuple[str, ...], flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The diffusers tensor shape that corresponds to a Flax leaf."""
    if path[-1] == "kernel":  # [*window, I, O] -> [O, I, *window]
        return (flax_shape[-1], flax_shape[-2], *flax_shape[:-2])
    if path[-1] == "gamma":  # attention norms are image norms (C, 1, 1); the others video norms (C, 1, 1, 1)
        return (flax_shape[0], 1, 1) if path[-2] == "norm" else (flax_shape[0], 1, 1, 1)
    return tuple(flax_shape)


def torch_to_flax(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        nd = value.ndim - 2
        return np.transpose(value, (*range(2, 2 + nd), 1, 0))
    if path[-1] == "gamma":
        return value.reshape(value.shape[0])
    return value


def flax_to_torch(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """Inverse of `torch_to_flax` (used for export)."""
    if path[-1] == "kernel":
        nd = value.ndim - 2
        return np.transpose(value, (nd + 1, nd, *range(nd)))
    if path[-1] == "gamma":
        return value.reshape(torch_shape(path, value.shape))
    return value


def _describe(config: WanVAEConfig) -> str:
    return (f"Wan VAE config (z_dim={config.z_dim}, base_dim={config.base_dim}, decoder_base_dim="
            f"{config.decoder_base_dim}, dim_mult={list(config.dim_mult)}, num_res_blocks={config.num_res_blocks}, "
            f"is_residual={config.is_residual}, patch_size={config.patch_size})")


def convert_vae_state_dict(torch_state: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
                           config: WanVAEConfig, dtype=np.float32) -> dict:
    """diffusers `AutoencoderKLWan` state dict (name -> array) -> our Flax params tree (numpy arrays of `dtype`).

    Raises VAEWeightMismatchError naming every missing, unexpected or wrongly shaped tensor."""
    items = torch_state.items() if isinstance(torch_state, Mapping) else torch_state
    expected = {torch_key(path): (path, leaf.shape)
                for path, leaf in traverse_util.flatten_dict(abstract_params(config)).items()}
    flat, unexpected, mismatched, seen = {}, [], [], set()
    for name, value in items:
        if name not in expected:
            unexpected.append(f"{name} {tuple(value.shape)}")
            continue
        seen.add(name)
        path, flax_shape = expected[name]
        want = torch_shape(path, flax_shape)
        if tuple(value.shape) != want:
            mismatched.append(f"{name}: checkpoint {tuple(value.shape)} vs model {want}")
            continue
        flat[path] = np.ascontiguousarray(torch_to_flax(path, np.asarray(value, np.float32))).astype(dtype)
    missing = [f"{name} {torch_shape(path, shape)}" for name, (path, shape) in expected.items() if name not in seen]
    if missing or unexpected or mismatched:
        parts = []
        for title, found in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if found:
                shown = "\n    ".join(found[:30]) + (f"\n    ... and {len(found) - 30} more" if len(found) > 30 else "")
                parts.append(f"  {title} ({len(found)}):\n    {shown}")
        raise VAEWeightMismatchError(
            f"VAE checkpoint does not match the {_describe(config)}:\n" + "\n".join(parts)
            + "\nCheck that config.json and the weights come from the same model folder.")
    return traverse_util.unflatten_dict(flat)


def read_vae_config(src: str) -> WanVAEConfig:
    path = os.path.join(src, "config.json")
    if not os.path.exists(path):
        raise checkpoint.CheckpointError(f"{src!r} holds no config.json: point --src at the diffusers 'vae' folder")
    with open(path) as f:
        raw = json.load(f)
    if raw.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan":
        raise ValueError(f"{path} describes a {raw['_class_name']}, not an AutoencoderKLWan")
    return WanVAEConfig.from_diffusers(raw)


def read_state_dict(src: str) -> dict[str, np.ndarray]:
    """Every tensor of a diffusers VAE folder (single file or sharded index), memory-mapped."""
    return dict(safetensors_io.iter_directory(src, _STEM))


def import_vae(src: str, out: str | None = None, dtype: str = "float32") -> tuple[WanVAEConfig, dict]:
    """Reads a diffusers VAE folder; writes an Orbax params checkpoint to `out` if given."""
    config = read_vae_config(src)
    params = convert_vae_state_dict(read_state_dict(src), config, np.dtype(jax.numpy.dtype(dtype)))
    if out is not None:
        checkpoint.save_params(out, params, {"kind": KIND, "config": config.to_diffusers(),
                                             "source": os.path.abspath(src), "dtype": dtype})
    return config, params


def load_vae(directory: str) -> tuple[WanVAEConfig, Any]:
    """Loads a checkpoint written by `import_vae` / `import-vae`."""
    meta = checkpoint.load_meta(directory, KIND)
    config = WanVAEConfig.from_diffusers(meta["config"])
    params, _ = checkpoint.load_params_checkpoint(directory)
    return config, params


@wam_cli.user_errors
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m wam_jax import-vae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="diffusers vae folder (config.json + *.safetensors)")
    parser.add_argument("--out", required=True, help="output checkpoint folder (its params/ must not exist yet)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="stored parameter dtype")
    args = parser.parse_args(argv)
    config, params = import_vae(args.src, args.out, args.dtype)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    print(f"imported Wan VAE: z_dim {config.z_dim}, stride {config.temporal_stride}x{config.spatial_stride}x"
          f"{config.spatial_stride}, {n / 1e6:.2f}M params -> {args.out}")
    return 0
