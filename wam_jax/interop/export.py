"""Export a checkpoint to PyTorch: the video DiT in diffusers layout + DriveWAM's own tensors, as safetensors.

    python -m wam_jax export --checkpoint runs/drivewam_tiny --out export/tiny
        [--step N] [--params params|ema] [--dtype float32|bfloat16]
        [--config experiments/FILE.py[:args]] [--set key=value ...] [--max-shard-size 10GB]

--checkpoint is one of
  * a training workdir, its checkpoints/ folder or one step folder (checkpoints/<step>/): the latest step
    unless --step; the model config is WORKDIR/config.json (written by `python -m wam_jax train`) or --config;
  * a params checkpoint (meta.json + params/): from `import-wan` (Wan DiT only) or
    `python -m wam_jax.interop.drivewam_import`.

OUT receives (layout in wam_jax/interop/drivewam_format.py):
  transformer/  config.json + diffusion_pytorch_model.safetensors: `WanTransformer3DModel.from_pretrained`
  drivewam/     drivewam_config.json + drivewam_actions.safetensors: with transformer/, everything
                `wam_jax.interop.torch_drivewam.DriveWAMTorch.from_pretrained(OUT)` needs (no JAX required there).

Streaming: parameters are read from Orbax one leaf at a time as host numpy arrays (a sharded array is
gathered for that leaf only), each of the leaf's tensors is converted and written, and the leaf is dropped
before the next is read. Host memory holds one leaf (at most a layer-stacked tensor) and one converted
tensor, never a second copy of the model. Export runs on one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import sys
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from wam_jax import checkpoint
from wam_jax import cli as wam_cli
from wam_jax.config import ConfigError, apply_overrides, load_config
from wam_jax.interop import drivewam_format as fmt
from wam_jax.interop.wan_layout import Entry, flax_to_torch, get_path, torch_shape, wan_entries
from wam_jax.models import wam as wam_lib
from wam_jax.models import wan_dit
from wam_jax.models.wam import WamConfig
from wam_jax.models.wan_dit import WanConfig

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
PARAM_SETS = {"params": "params", "ema": "ema_params"}       # --params value → TrainState field
# Experiment-config sections kept in drivewam_config.json: what inference needs besides the weights.
EXTRA_SECTIONS = ("action_norm", "flow", "guidance", "chunks", "sampler", "latent")
DEFAULT_MAX_SHARD_BYTES = 10 * 10 ** 9                      # diffusers' default max_shard_size ("10GB")
DRIVEWAM_KIND = "drivewam"                                  # meta.json kind of a DriveWAM params checkpoint
WAN_KIND = "wan_transformer"                                # ... of a Wan DiT params checkpoint (import-wan)
_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16"}


class ExportError(ValueError):
    """The parameters cannot be exported as asked (they do not fit the config, OUT is taken, ...)."""


def action_entries(wan: WanConfig) -> list[Entry]:
    """Name table of DriveWAM's own tensors (the torch side of `drivewam_format.ACTION_TENSORS` and, per block,
    `EGO_BLOCK_TENSORS`)."""
    entries = []
    for prefix, path, kind in fmt.ACTION_TENSORS:
        if kind == "linear":
            entries += [Entry(f"{prefix}.weight", path + ("kernel",), None, "linear"),
                        Entry(f"{prefix}.bias", path + ("bias",), None, "vector")]
        else:
            entries.append(Entry(prefix, path, None, kind))
    for i in range(wan.num_layers):
        block = ("blocks", "blocks") if wan.scan_layers else ("blocks", f"blocks_{i}")
        layer = i if wan.scan_layers else None
        for name, path, kind in fmt.EGO_BLOCK_TENSORS:
            prefix = f"ego_blocks.{i}.{name}"
            if kind == "linear":
                entries += [Entry(f"{prefix}.weight", block + path + ("kernel",), layer, "linear"),
                            Entry(f"{prefix}.bias", block + path + ("bias",), layer, "vector")]
            else:
                entries.append(Entry(prefix, block + path, layer, kind))
    return entries


# ----- where parameters come from ------------------------------------------------------------------------------

class ParamSource:
    """Parameters read one leaf at a time. `shapes`: tree of jax.ShapeDtypeStruct; `leaf(path)`: host numpy
    array. Only the most recently read leaf is kept, so callers visit tensors grouped by leaf."""

    def __init__(self, shapes, read: Callable[[tuple[str, ...]], np.ndarray], description: str,
                 close: Callable[[], None] = lambda: None):
        self.shapes, self.description = shapes, description
        self._read, self._close = read, close
        self._path, self._value = None, None

    def leaf(self, path: tuple[str, ...]) -> np.ndarray:
        if path != self._path:
            self._path, self._value = None, None        # drop the previous leaf before reading the next one
            self._value, self._path = self._read(path), path
        return self._value

    def close(self):
        self._path, self._value = None, None
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @classmethod
    def from_tree(cls, params, description: str = "in-memory params") -> "ParamSource":
        """An in-memory params tree (numpy or jax arrays, sharded ones are gathered per leaf)."""
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.dtype(x.dtype)), params)
        return cls(shapes, lambda path: np.asarray(jax.device_get(get_path(params, path))), description)

    @classmethod
    def from_orbax(cls, directory: str, prefix: tuple[str, ...] = ()) -> "ParamSource":
        """The subtree at `prefix` of an Orbax PyTree checkpoint, restored leaf by leaf as numpy arrays."""
        checkpointer = ocp.PyTreeCheckpointer()
        tree = checkpoint.stored_tree(directory)
        for key in prefix:
            if not isinstance(tree, Mapping) or key not in tree:
                checkpointer.close()
                raise checkpoint.CheckpointError(f"{directory} holds no {'/'.join(prefix)!r} parameters")
            tree = tree[key]
        shapes = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype)), tree)

        def nest(path, value):
            for key in reversed(path):
                value = {key: value}
            return value

        def read(path):
            full = prefix + path
            restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
                item=nest(full, 0), restore_args=nest(full, ocp.RestoreArgs(restore_type=np.ndarray)),
                partial_restore=True))
            return np.asarray(get_path(restored, full))

        return cls(shapes, read, f"{directory} [{'/'.join(prefix) or 'root'}]", checkpointer.close)


def check_shapes(shapes, expected, where: str) -> None:
    """Raises ExportError listing every missing, unexpected and mis-shaped parameter of `shapes`."""
    got = {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}
    want = {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(expected).items()}
    problems = [f"missing {k} {want[k]}" for k in sorted(set(want) - set(got))]
    problems += [f"unexpected {k} {got[k]}" for k in sorted(set(got) - set(want))]
    problems += [f"{k}: checkpoint {got[k]} vs config {want[k]}" for k in sorted(set(got) & set(want))
                 if got[k] != want[k]]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ExportError(f"the parameters in {where} do not fit the model config (wrong --config?):\n  {shown}")


# ----- writing ---------------------------------------------------------------------------------------------

def write_safetensors(path: str, specs: Sequence[tuple[str, tuple[int, ...], np.dtype]],
                      fetch: Callable[[int], np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Writes a safetensors file whose header is known up front (name, shape, dtype per tensor) and whose
    tensors are produced one at a time by fetch(i), so only one is in memory. Atomic (temporary file)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for i, (name, shape, dtype) in enumerate(specs):
            value = fetch(i)
            if tuple(value.shape) != tuple(shape) or value.dtype != dtype:
                raise AssertionError(f"{name}: produced {value.shape} {value.dtype}, header says {shape} {dtype}")
            f.write(np.ascontiguousarray(value).tobytes())
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class _Tensor:
    entry: Entry
    shape: tuple[int, ...]     # torch shape


def _plan(entries: Sequence[Entry], shapes, cfg: WanConfig) -> list[_Tensor]:
    """Tensors in leaf order (all layers of a stacked leaf together), so each leaf is read once."""
    planned = [_Tensor(e, tuple(torch_shape(e, get_path(shapes, e.flax_path).shape, cfg))) for e in entries]
    return sorted(planned, key=lambda t: (t.entry.flax_path, -1 if t.entry.layer is None else t.entry.layer))


def _write_weights(directory: str, stem: str, tensors: list[_Tensor], source: ParamSource, cfg: WanConfig,
                   dtype: np.dtype, max_shard_bytes: int) -> list[str]:
    """Writes `tensors` as stem.safetensors, or as diffusers-style shards + index when they exceed
    max_shard_bytes. Returns the file names."""
    shards: list[list[_Tensor]] = [[]]
    size = 0
    for t in tensors:
        nbytes = math.prod(t.shape) * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes

    def fetch(t: _Tensor) -> np.ndarray:
        leaf = source.leaf(t.entry.flax_path)
        value = leaf[t.entry.layer] if t.entry.layer is not None else leaf
        return flax_to_torch(t.entry, value.astype(dtype, copy=False), cfg)

    n = len(shards)
    names = [f"{stem}.safetensors"] if n == 1 else [f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for name, shard in zip(names, shards):
        write_safetensors(os.path.join(directory, name), [(t.entry.torch_name, t.shape, dtype) for t in shard],
                          lambda i, shard=shard: fetch(shard[i]))
    if n > 1:
        index = {"metadata": {"total_size": sum(math.prod(t.shape) * dtype.itemsize for t in tensors)},
                 "weight_map": {t.entry.torch_name: name for name, shard in zip(names, shards) for t in shard}}
        with open(os.path.join(directory, f"{stem}.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
    return names


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    out: str
    dtype: str
    transformer_tensors: int
    action_tensors: int
    num_params: int
    files: tuple[str, ...]

    def __str__(self) -> str:
        what = "DriveWAM" if self.action_tensors else "Wan transformer"
        return (f"exported {what}: {self.num_params / 1e6:.2f}M params as {self.dtype}, "
                f"{self.transformer_tensors} transformer + {self.action_tensors} action tensors → {self.out}")


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def export_source(source: ParamSource, wan: WanConfig, wam: WamConfig | None, out: str, dtype: str = "float32",
                  extras: Mapping[str, Any] | None = None, info: Mapping[str, Any] | None = None,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> ExportSummary:
    """Writes OUT/transformer (and, with a WamConfig, OUT/drivewam) from `source`. `extras`: experiment
    sections kept in drivewam_config.json (action_norm, flow, ...); `info`: where the params came from."""
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r} unknown; choose one of {sorted(DTYPES)}")
    np_dtype = DTYPES[dtype]
    if wan.rope_theta != 10000.0:
        raise ExportError(f"rope_theta={wan.rope_theta} cannot be expressed in diffusers' WanTransformer3DModel "
                          "(it fixes theta = 10000)")
    expected = nn.unbox(wam_lib.abstract_params(wan, wam) if wam is not None else wan_dit.abstract_params(wan))
    check_shapes(source.shapes, expected, source.description)

    out = os.path.abspath(out)
    targets = [fmt.TRANSFORMER_DIR] + ([fmt.DRIVEWAM_DIR] if wam is not None else [])
    taken = [os.path.join(out, t) for t in targets if os.path.exists(os.path.join(out, t))]
    if taken:
        raise ExportError(f"{', '.join(taken)} already exist(s); choose a new --out directory or remove them")
    os.makedirs(out, exist_ok=True)
    staging = os.path.join(out, f".export-tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        tdir = os.path.join(staging, fmt.TRANSFORMER_DIR)
        os.makedirs(tdir)
        with open(os.path.join(tdir, "config.json"), "w") as f:
            json.dump(wan.to_diffusers(), f, indent=2)
        wan_tensors = _plan(wan_entries(wan), source.shapes, wan)
        files = [os.path.join(fmt.TRANSFORMER_DIR, n)
                 for n in _write_weights(tdir, fmt.WEIGHTS_STEM, wan_tensors, source, wan, np_dtype, max_shard_bytes)]
        act_tensors: list[_Tensor] = []
        if wam is not None:
            ddir = os.path.join(staging, fmt.DRIVEWAM_DIR)
            os.makedirs(ddir)
            act_tensors = _plan(action_entries(wan), source.shapes, wan)
            _write_weights(ddir, os.path.splitext(fmt.ACTIONS_FILE)[0], act_tensors, source, wan, np_dtype,
                           max_shard_bytes=2 ** 62)
            doc = {"format": fmt.FORMAT, "format_version": fmt.FORMAT_VERSION,
                   "model": dict(dataclasses.asdict(wan), param_dtype=dtype), "wam": dataclasses.asdict(wam),
                   **_jsonable(dict(extras or {})), "dtype": dtype, "source": _jsonable(dict(info or {}))}
            with open(os.path.join(ddir, fmt.CONFIG_FILE), "w") as f:
                json.dump(doc, f, indent=2)
            files += [os.path.join(fmt.DRIVEWAM_DIR, fmt.ACTIONS_FILE), os.path.join(fmt.DRIVEWAM_DIR, fmt.CONFIG_FILE)]
        for t in targets:
            os.replace(os.path.join(staging, t), os.path.join(out, t))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    n = sum(math.prod(t.shape) for t in wan_tensors + act_tensors)
    return ExportSummary(out, dtype, len(wan_tensors), len(act_tensors), n, tuple(files))


# ----- from configs and checkpoints ----------------------------------------------------------------------

def configs_from_experiment(config) -> tuple[WanConfig, WamConfig | None, dict[str, Any]]:
    """(WanConfig, WamConfig or None, extra sections) from an experiment config (ConfigDict or dict)."""
    data = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    if "model" not in data:
        raise ConfigError(f"the config has no 'model' section (sections: {sorted(data)})")
    wan = WanConfig.from_config(data["model"], "config.model")
    wam = WamConfig.from_config(data["wam"], "config.wam") if data.get("wam") is not None else None
    return wan, wam, {k: data[k] for k in EXTRA_SECTIONS if k in data}


def export_params(params, config, out: str, dtype: str = "float32",
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> ExportSummary:
    """Exports an in-memory params tree (DriveWAM, or Wan DiT when the config has no `wam` section)."""
    wan, wam, extras = configs_from_experiment(config)
    with ParamSource.from_tree(params) as source:
        return export_source(source, _with_scan_layout(wan, source.shapes), wam, out, dtype, extras,
                             {"checkpoint": None}, max_shard_bytes)


def _with_scan_layout(wan: WanConfig, shapes) -> WanConfig:
    """Follows the checkpoint's block layout (stacked under nn.scan or one subtree per layer)."""
    blocks = shapes.get("blocks") if isinstance(shapes, Mapping) else None
    if not isinstance(blocks, Mapping):
        return wan
    return dataclasses.replace(wan, scan_layers="blocks" in blocks)


@dataclasses.dataclass(frozen=True)
class ResolvedCheckpoint:
    kind: str                       # "train" (Trainer checkpoint) or "params" (checkpoint.save_params)
    orbax_dir: str                  # the Orbax PyTree directory to read
    prefix: tuple[str, ...]         # where the params sit inside it
    step: int | None = None
    workdir: str | None = None
    meta: dict | None = None


def resolve_checkpoint(path: str, step: int | None = None, params: str = "params") -> ResolvedCheckpoint:
    """Finds what --checkpoint points at (the run layout is checkpoint.resolve's); a training step is checked
    against its checksums, and without --step a corrupt newest step falls back to the newest intact one."""
    if params not in PARAM_SETS:
        raise ConfigError(f"--params {params!r} unknown; choose one of {sorted(PARAM_SETS)}")
    run = checkpoint.resolve(path)
    if run.params_dir:
        if step is not None or params != "params":
            raise ConfigError(f"{run.params_dir} is a params checkpoint (one set of parameters): --step and --params "
                              "ema apply to training checkpoints only")
        orbax_dir = os.path.join(run.params_dir, checkpoint.PARAMS_DIR)
        if not os.path.isdir(orbax_dir):
            raise checkpoint.CheckpointError(f"{run.params_dir} has {checkpoint.META_FILE} but no "
                                             f"{checkpoint.PARAMS_DIR}/ folder; the checkpoint is incomplete")
        checkpoint.verify_checksums(orbax_dir)
        return ResolvedCheckpoint("params", orbax_dir, (), meta=checkpoint.load_meta(run.params_dir))
    if run.step is not None and step is not None and step != run.step:
        raise ConfigError(f"--step {step} contradicts the step folder {checkpoint.step_dir(run.root, run.step)}")
    chosen, _ = checkpoint.first_intact(run.root, lambda s: None, run.step if run.step is not None else step)
    return ResolvedCheckpoint("train", os.path.join(checkpoint.step_dir(run.root, chosen), checkpoint.STATE_ITEM),
                              (PARAM_SETS[params],), chosen, run.workdir)


def _config_for(resolved: ResolvedCheckpoint, config_spec: str | None, overrides: Sequence[str]):
    """The experiment config (or None with a Wan-only WanConfig) that describes the checkpoint."""
    if config_spec:
        return load_config(config_spec, overrides), None
    if resolved.kind == "train":
        path = os.path.join(resolved.workdir or "", "config.json")
        if not os.path.exists(path):
            raise ConfigError(f"{path} does not exist (`python -m wam_jax train` writes it); pass the training "
                              "config with --config experiments/FILE.py[:args] [--set key=value ...]")
        with open(path) as f:
            return apply_overrides(ml_collections.ConfigDict(json.load(f)), overrides), None
    kind = resolved.meta.get("kind")
    if kind == DRIVEWAM_KIND:
        return apply_overrides(ml_collections.ConfigDict(resolved.meta["config"]), overrides), None
    if kind == WAN_KIND:
        if overrides:
            raise ConfigError("--set applies to experiment configs; a Wan checkpoint's config is its meta.json")
        return None, WanConfig.from_diffusers(resolved.meta["config"],
                                              scan_layers=resolved.meta.get("scan_layers", True))
    raise ConfigError(f"{os.path.dirname(resolved.orbax_dir)} holds a {kind!r} checkpoint; export handles "
                      f"{DRIVEWAM_KIND!r} and {WAN_KIND!r} params checkpoints and training checkpoints, or pass "
                      "--config describing the parameters")


def export_checkpoint(checkpoint_path: str, out: str, dtype: str = "float32", params: str = "params",
                      config: str | None = None, overrides: Sequence[str] = (), step: int | None = None,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> ExportSummary:
    """The `export` command as a function (arguments as on the command line)."""
    resolved = resolve_checkpoint(checkpoint_path, step, params)
    experiment, wan_only = _config_for(resolved, config, overrides)
    if experiment is not None:
        wan, wam, extras = configs_from_experiment(experiment)
    else:
        wan, wam, extras = wan_only, None, {}
    info = {"checkpoint": os.path.abspath(checkpoint_path), "kind": resolved.kind, "step": resolved.step,
            "params": params}
    with ParamSource.from_orbax(resolved.orbax_dir, resolved.prefix) as source:
        return export_source(source, _with_scan_layout(wan, source.shapes), wam, out, dtype, extras, info,
                             max_shard_bytes)


def parse_size(text: str) -> int:
    """'10GB', '500MB', '20KB' (powers of 1000, as diffusers' max_shard_size) or a byte count."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)?\s*", text.upper())
    if not match:
        raise ConfigError(f"size {text!r} not understood; write e.g. 10GB, 500MB or a number of bytes")
    return int(float(match.group(1)) * {None: 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9}[match.group(2)])


@wam_cli.user_errors
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m wam_jax export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="training workdir / checkpoints folder / params checkpoint")
    parser.add_argument("--out", required=True, help="output folder (gets transformer/ and drivewam/)")
    parser.add_argument("--step", type=int, default=None, help="training step to export (default: the latest)")
    parser.add_argument("--params", default="params", choices=sorted(PARAM_SETS), help="raw or EMA parameters")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="stored tensor dtype")
    wam_cli.add_config_args(parser)
    parser.add_argument("--max-shard-size", default="10GB", help="split transformer weights into shards of this size")
    args = parser.parse_args(argv)
    summary = export_checkpoint(args.checkpoint, args.out, args.dtype, args.params, args.config, args.set,
                                args.step, parse_size(args.max_shard_size))
    print(summary)
    return 0
