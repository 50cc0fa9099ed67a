"""The one table that relates diffusers `WanTransformer3DModel` tensor names to our Flax parameter paths.

Import (diffusers → Flax) and export (Flax → diffusers) both walk this table, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

from wam_jax.models.wan_dit import WanConfig


@dataclasses.dataclass(frozen=True)
class Entry:
    torch_name: str
    flax_path: tuple[str, ...]     # path inside the Wan params tree
    layer: int | None              # index on the stacked "layers" axis (None: not a per-block tensor)
    kind: str                      # linear | vector | table | conv


def _linear(prefix: str, path: tuple[str, ...], layer: int | None) -> list[Entry]:
    return [Entry(f"{prefix}.weight", path + ("kernel",), layer, "linear"),
            Entry(f"{prefix}.bias", path + ("bias",), layer, "vector")]


def wan_entries(cfg: WanConfig) -> list[Entry]:
    ce = ("condition_embedder",)
    entries = [
        Entry("patch_embedding.weight", ("patch_embed", "patch_embedding", "kernel"), None, "conv"),
        Entry("patch_embedding.bias", ("patch_embed", "patch_embedding", "bias"), None, "vector"),
        *_linear("condition_embedder.time_embedder.linear_1", ce + ("time_embedder_linear_1",), None),
        *_linear("condition_embedder.time_embedder.linear_2", ce + ("time_embedder_linear_2",), None),
        *_linear("condition_embedder.time_proj", ce + ("time_proj",), None),
        *_linear("condition_embedder.text_embedder.linear_1", ce + ("text_embedder_linear_1",), None),
        *_linear("condition_embedder.text_embedder.linear_2", ce + ("text_embedder_linear_2",), None),
        Entry("scale_shift_table", ("head", "scale_shift_table"), None, "table"),
        *_linear("proj_out", ("head", "proj_out"), None),
    ]
    for i in range(cfg.num_layers):
        t = f"blocks.{i}"
        b = ("blocks", "blocks") if cfg.scan_layers else ("blocks", f"blocks_{i}")
        layer = i if cfg.scan_layers else None
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v"):
                entries += _linear(f"{t}.{attn}.{proj}", b + (attn, proj), layer)
            entries += _linear(f"{t}.{attn}.to_out.0", b + (attn, "to_out"), layer)
            entries += [Entry(f"{t}.{attn}.norm_q.weight", b + (attn, "norm_q", "scale"), layer, "vector"),
                        Entry(f"{t}.{attn}.norm_k.weight", b + (attn, "norm_k", "scale"), layer, "vector")]
        if cfg.cross_attn_norm:
            entries += [Entry(f"{t}.norm2.weight", b + ("norm2", "scale"), layer, "vector"),
                        Entry(f"{t}.norm2.bias", b + ("norm2", "bias"), layer, "vector")]
        entries += _linear(f"{t}.ffn.net.0.proj", b + ("ffn", "fc_in"), layer)
        entries += _linear(f"{t}.ffn.net.2", b + ("ffn", "fc_out"), layer)
        entries.append(Entry(f"{t}.scale_shift_table", b + ("scale_shift_table",), layer, "table"))
    return entries


def torch_to_flax(entry: Entry, value: np.ndarray, cfg: WanConfig) -> np.ndarray:
    """One diffusers tensor in our layout (per layer; stacking is the caller's job)."""
    if entry.kind == "linear":
        return np.asarray(value).T
    if entry.kind == "table":
        return np.asarray(value).reshape(value.shape[-2:])
    if entry.kind == "conv":
        # Conv3d [D, C, pt, ph, pw] → dense over patch vectors ordered (pt, ph, pw, C).
        return np.asarray(value).transpose(2, 3, 4, 1, 0).reshape(-1, value.shape[0])
    return np.asarray(value)


def flax_to_torch(entry: Entry, value: np.ndarray, cfg: WanConfig) -> np.ndarray:
    """Inverse of `torch_to_flax` for one (unstacked) tensor."""
    value = np.asarray(value)
    if entry.kind == "linear":
        return np.ascontiguousarray(value.T)
    if entry.kind == "table":
        return value[None]
    if entry.kind == "conv":
        pt, ph, pw = cfg.patch_size
        return np.ascontiguousarray(value.reshape(pt, ph, pw, cfg.in_channels, -1).transpose(4, 3, 0, 1, 2))
    return value


def torch_shape(entry: Entry, flax_leaf_shape: tuple[int, ...], cfg: WanConfig) -> tuple[int, ...]:
    """Expected diffusers shape of an entry, derived from our (possibly stacked) leaf shape."""
    shape = flax_leaf_shape[1:] if entry.layer is not None else flax_leaf_shape
    dummy = np.empty(shape, np.int8)
    return flax_to_torch(entry, dummy, cfg).shape


def get_path(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def iter_torch_tensors(params, cfg: WanConfig, to_numpy: Callable = np.asarray) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (diffusers name, array) for every Wan tensor of a params tree, one at a time."""
    for entry in wan_entries(cfg):
        leaf = get_path(params, entry.flax_path)
        value = leaf[entry.layer] if entry.layer is not None else leaf
        yield entry.torch_name, flax_to_torch(entry, to_numpy(value), cfg)


class WeightMismatchError(ValueError):
    """Checkpoint tensors do not match the model: lists every missing, unexpected and mis-shaped tensor."""


def fill_params(tensors, entries: list[Entry], out, cfg: WanConfig, dtype, what: str) -> None:
    """Writes each (diffusers name, array) into the numpy params tree `out` (stacked layers by index),
    checking names and shapes; raises one WeightMismatchError listing every problem."""
    by_name = {e.torch_name: e for e in entries}
    seen, unexpected, mismatched = set(), [], []
    for name, value in tensors:
        entry = by_name.get(name)
        if entry is None:
            unexpected.append(f"{name} {tuple(value.shape)}")
            continue
        leaf = get_path(out, entry.flax_path)
        want = torch_shape(entry, leaf.shape, cfg)
        if tuple(value.shape) != tuple(want):
            mismatched.append(f"{name}: checkpoint {tuple(value.shape)} vs model {tuple(want)}")
            continue
        converted = torch_to_flax(entry, np.asarray(value, np.float32), cfg).astype(dtype)
        if entry.layer is None:
            leaf[...] = converted
        else:
            leaf[entry.layer] = converted
        seen.add(name)
    missing = [f"{n} {torch_shape(e, get_path(out, e.flax_path).shape, cfg)}" for n, e in by_name.items()
               if n not in seen]
    if missing or unexpected or mismatched:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                shown = "\n    ".join(items[:20]) + (f"\n    ... and {len(items) - 20} more" if len(items) > 20 else "")
                parts.append(f"  {title} ({len(items)}):\n    {shown}")
        raise WeightMismatchError(f"{what} does not match the model config:\n" + "\n".join(parts))
