"""Ahead-of-time compile of the real train step and rollout chunk step for a TPU topology, on any machine.

    python -m wam_jax compile-check --config experiments/FILE.py[:args] --topology v5p:2x2x2 [--batch N]
        [--set key=value ...] [--what train,rollout] [--json PATH]

libtpu's compiler (`pip install -e '.[tpu]'`, no TPU needed) compiles for the abstract devices of
`jax.experimental.topologies.get_topology_desc(topology, platform="tpu")`, as maxtext's train_compile.py does.
Compiled: `Trainer.train_step` (the jitted step training runs, with its shardings) on a global batch of `--batch`
examples (default: one per chip) and `RolloutEngine._integrate` (one chunk's denoising against a full KV cache,
one example per data×fsdp shard), under the config's mesh (`--set mesh.fsdp=4 --set mesh.sequence=2`; a -1 axis
takes the remaining chips). Printed per chip: argument, output, temporary and total bytes, HBM capacity, fits or
not, compile time. An out-of-memory compile is a result: the compiler's figure (used vs available) is printed.

Topologies are named by chip grid: v5p:2x2x2 (8 chips), v5p:4x4x4 (64), v6e:8x8 (64), v4:2x2x1, v5e:2x2 ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from typing import Any

import numpy as np

GIB = 1024 ** 3
# HBM per chip (GiB) by topology generation: v5p and v6e as the TPU compiler reports them available in its
# out-of-memory messages (95.74G, 31.25G); the others are the nominal capacities (v4 32 GiB, v5e 16 GiB) until an
# out-of-memory compile reports the compiler's own figure, which then replaces it in the result.
HBM_GIB = {"v5p": 95.74, "v4": 32.0, "v5e": 16.0, "v5litepod": 16.0, "v6e": 31.25}
# The compiler words it two ways: "Used 150.34G of 95.74G hbm" and "the total memory required for HLO
# temporaries (97.18G) exceeds available HBM (95.74G)" (the second counts temporaries only).
_OOM = (re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"),
        re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)"))
_UNIT = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def topology_devices(topology: str):
    """Abstract TPU devices of a topology such as 'v5p:2x2x2' (needs libtpu; no TPU)."""
    # Compiling touches no TPU, so several compile-checks may run at once (libtpu otherwise takes a host lock).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        import libtpu  # noqa: F401
    except ImportError as err:
        raise SystemExit("compile-check needs libtpu: pip install -e '.[tpu]' (jax[tpu] of the installed jax "
                         "version)") from err
    from jax.experimental import topologies
    if not re.fullmatch(r"v\d+[a-z]*(:\d+(x\d+)+)", topology):
        raise SystemExit(f"--topology {topology!r}: expected <generation>:<chip grid>, e.g. v5p:2x2x2 or v6e:8x8")
    return topologies.get_topology_desc(topology, platform="tpu").devices


def hbm_bytes(topology: str) -> float | None:
    gib = HBM_GIB.get(topology.split(":")[0].lower())
    return None if gib is None else gib * GIB


def _resolve_mesh(mesh_cfg: dict, chips: int) -> dict:
    from wam_jax.sharding import MESH_AXES
    shape = {a: int(mesh_cfg.get(a, 1)) for a in MESH_AXES}
    free = [a for a, n in shape.items() if n == -1]
    known = math.prod(n for n in shape.values() if n != -1)
    if free:
        shape[free[0]] = chips // known
    if math.prod(shape.values()) != chips:
        raise SystemExit(f"mesh {shape} has {math.prod(shape.values())} chips, the topology has {chips}")
    return shape


def memory_figures(compiled) -> dict[str, float]:
    m = compiled.memory_analysis()
    out = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
           "alias": m.alias_size_in_bytes, "temporary": m.temp_size_in_bytes,
           "code": m.generated_code_size_in_bytes}
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temporary"] + out["code"]
    # host memory (pinned_host: offloaded state and block inputs), not part of the HBM total
    out["host"] = sum(getattr(m, f"host_{k}_size_in_bytes", 0) for k in ("argument", "output", "temp")) \
        - getattr(m, "host_alias_size_in_bytes", 0)
    return {k: float(v) for k, v in out.items()}


def _compile(lower_fn, capacity: float | None) -> dict[str, Any]:
    """Lowers and compiles; an out-of-memory compile returns the compiler's figures instead of raising."""
    t0 = time.perf_counter()
    try:
        compiled = lower_fn().compile()
    except Exception as err:        # XlaRuntimeError / JaxRuntimeError, type differs across versions
        text = str(err)
        hits = [m for m in (p.search(text) for p in _OOM) if m]
        if "RESOURCE_EXHAUSTED" not in text or not hits:
            raise
        hit = hits[0]
        used = float(hit.group(1)) * _UNIT[hit.group(2)]
        avail = float(hit.group(3)) * _UNIT[hit.group(4)]
        return {"fits": False, "oom": True, "total": used, "hbm": avail, "compile_s": time.perf_counter() - t0,
                "what": "temporaries" if hit.re is _OOM[1] else "total",
                "message": text.strip().splitlines()[-1][:300]}
    res = memory_figures(compiled)
    res["splash_kernels"] = compiled.as_text().count("tpu_custom_call")
    res.update(compile_s=time.perf_counter() - t0, oom=False, hbm=capacity,
               fits=None if capacity is None else res["total"] <= capacity)
    return res


class _NoData:
    def get_state(self):
        return {}

    def set_state(self, state):
        pass


def check_train(config, devices, batch: int, capacity: float | None) -> dict[str, Any]:
    import jax
    from wam_jax import sharding
    from wam_jax.data import prepare_batch
    from wam_jax.tools.bench import synthetic_raw_batch
    from wam_jax.training.trainer import Trainer
    config.train.batch_size = batch
    with tempfile.TemporaryDirectory(prefix="wam_compile_check_") as workdir:
        trainer = Trainer(config, workdir, data=_NoData(), guidance_table=np.zeros((1,), np.float32),
                          devices=devices)
        raw = synthetic_raw_batch(config, trainer.wan, trainer.wam, 1)
        one = prepare_batch(raw, config, trainer.action_norm, trainer.guidance_table)
        abstract_batch = {k: jax.ShapeDtypeStruct((batch,) + v.shape[1:], v.dtype,
                                                  sharding=sharding.batch_sharding(trainer.mesh, v.ndim))
                          for k, v in one.items()}
        res = _compile(lambda: trainer.train_step.lower(trainer.abstract_state, abstract_batch), capacity)
        trainer.checkpoints.close()
    return res


def check_rollout(config, devices, mesh_shape: dict, capacity: float | None) -> dict[str, Any]:
    """One chunk's denoising (all sampler steps of the first stage) against a full-size KV cache."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from jax.sharding import NamedSharding, PartitionSpec
    from wam_jax import sharding
    from wam_jax.models import wam as wam_lib
    from wam_jax.rollout import kv_memory
    from wam_jax.rollout.engine import RolloutEngine, SamplerConfig
    wan, wam = wam_lib.build_configs(config)
    mesh = sharding.make_mesh(mesh_shape, devices)
    batch = mesh.shape["data"] * mesh.shape["fsdp"]
    engine = RolloutEngine(wan, wam, SamplerConfig.from_config(config.sampler),
                           kv_memory.MemoryConfig.from_config(config.memory))
    boxed = wam_lib.abstract_params(wan, wam)
    shapes = nn.unbox(boxed)
    shards = sharding.fit_shardings(sharding.mesh_shardings(boxed, mesh), shapes)
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shards)
    batch_axes = sharding._drop_trivial(PartitionSpec(("data", "fsdp")), mesh)[0]
    cache = jax.eval_shape(lambda: engine.init_cache(batch))
    cache = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(
        mesh, PartitionSpec(None, batch_axes))), cache)
    on_batch = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(
        shape, dtype, sharding=NamedSharding(mesh, PartitionSpec(batch_axes)))
    x_v = on_batch((batch, wam.latent_frames_per_chunk, wam.latent_height, wam.latent_width, wan.in_channels))
    x_a = on_batch((batch, wam.waypoints_per_chunk, wam.action_dim))
    guidance = (on_batch((batch, 1, wam.guidance_tokens, wan.text_dim)) if config.guidance.enabled else None)
    ego = on_batch((batch, 1, len(wam_lib.EGO_FEATURES)))       # the chunk's ego state, as run_rollout passes it
    _, grid_v, grid_a = engine.stages[0]
    chunk = jax.ShapeDtypeStruct((), jnp.int32)

    def lower():
        with sharding.activation_context(mesh):
            return engine._integrate.lower(params, cache, chunk, guidance, ego, x_v, x_a, grid_v, grid_a)
    res = _compile(lower, capacity)
    res["rollout_batch"] = batch
    res["cache_slots"] = int(cache["k"].shape[2])
    return res


def _gib(x):
    return "—" if x is None else f"{x / GIB:,.2f}"


def format_result(name: str, r: dict) -> str:
    if r.get("oom"):
        return (f"{name:<9} OUT OF MEMORY at compile: {r['what']} {_gib(r['total'])} GiB per chip of "
                f"{_gib(r['hbm'])} GiB HBM (compile {r['compile_s']:.0f} s)")
    spare = "" if r["hbm"] is None else f", {100 * (1 - r['total'] / r['hbm']):.1f}% HBM spare"
    host = f"; host memory {_gib(r['host'])} GiB per chip" if r.get("host") else ""
    return (f"{name:<9} args {_gib(r['argument'])}  out {_gib(r['output'])}  alias {_gib(r['alias'])}  "
            f"temp {_gib(r['temporary'])}  total {_gib(r['total'])} GiB per chip of {_gib(r['hbm'])} GiB HBM: "
            f"{'fits' if r['fits'] else 'does NOT fit' if r['fits'] is False else 'capacity unknown'}{spare}{host} "
            f"(compile {r['compile_s']:.0f} s)")


def run(config_path: str, topology: str, batch: int | None = None, overrides=(), what=("train", "rollout"),
        out=sys.stdout) -> dict[str, Any]:
    from wam_jax.config import load_config
    devices = topology_devices(topology)
    config = load_config(config_path, list(overrides))
    mesh_shape = _resolve_mesh(dict(config.mesh), len(devices))
    config.mesh = mesh_shape
    batch = len(devices) if batch is None else batch
    result: dict[str, Any] = {"config": config_path, "overrides": list(overrides), "topology": topology,
                              "chips": len(devices), "device_kind": devices[0].device_kind, "mesh": mesh_shape,
                              "batch": batch}
    print(f"compile-check {config_path} {' '.join(overrides)} on {topology} ({len(devices)} x "
          f"{devices[0].device_kind}), mesh {mesh_shape}, train batch {batch} "
          f"({batch / len(devices):g} per chip)", file=out, flush=True)
    if "train" in what:
        result["train"] = check_train(config, devices, batch, hbm_bytes(topology))
        print(format_result("train", result["train"]), file=out, flush=True)
    if "rollout" in what:
        result["rollout"] = check_rollout(config, devices, mesh_shape, hbm_bytes(topology))
        print(format_result("rollout", result["rollout"]) + f" [batch {result['rollout']['rollout_batch']}, "
              f"{result['rollout']['cache_slots']} cache slots]", file=out, flush=True)
    return result


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m wam_jax compile-check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--topology", required=True, help="e.g. v5p:2x2x2, v5p:4x4x4, v6e:8x8")
    parser.add_argument("--batch", type=int, default=None, help="global train batch (default: one per chip)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--what", default="train,rollout", help="train, rollout or both (comma-separated)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    what = tuple(w.strip() for w in args.what.split(",") if w.strip())
    if not what or set(what) - {"train", "rollout"}:
        parser.error(f"--what {args.what!r}: choose train, rollout or train,rollout")
    result = run(args.config, args.topology, args.batch, args.set, what)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    fits = [result[w]["fits"] for w in what]
    return 0 if all(f is not False for f in fits) else 3
