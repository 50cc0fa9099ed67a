"""Benchmarks of an experiment config: analytic FLOPs, train-step time / MFU / memory, rollout latency per stage
and KV memory, input-pipeline share, and a side-by-side with diffusers' PyTorch Wan DiT.

    python -m wam_jax bench --config experiments/FILE.py[:args] [--set key=value ...] [--steps N] [--warmup N]
        [--batch B] [--what train,rollout,torch,input,memory | all | flops] [--json PATH] [--peak-tflops T]

Everything runs on random weights and synthetic latents of the config's shapes (no checkpoint, no dataset),
except `--what input`, which reads the config's real input pipeline. Results are printed as plain-text tables
headed by the device, date, versions and the exact command; `--json PATH` saves the same numbers.

FLOPs come from the analytic model in `wam_jax.models.flops` (formula there); `--what flops` also prints
the attention pair counts: masked (the pairs the mask allows) vs computed by each attention kernel.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np

from wam_jax import cli as wam_cli
from wam_jax.tools import tables as table_io

SECTIONS = ("train", "rollout", "torch", "input", "memory")
ENV_VARS = ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "JAX_PLATFORMS",
            "CUDA_VISIBLE_DEVICES")
DEFAULT_SECTIONS = ("train", "rollout")

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by substring of jax's device_kind; the first match wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v6", 918.0),
)


# ----- FLOPs (the model lives in wam_jax.models.flops; re-exported for callers of bench) --------------------
from wam_jax.models.flops import (attention_pairs, flop_breakdown, hlo_dot_flops, model_flops,  # noqa: E402,F401
                                  visible_pairs, wan_video_flops, xla_cost_flops, xla_forward_flops)


# ----- formatting -------------------------------------------------------------------------------------------
def format_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()) -> str:
    """Aligned plain text (`tools.tables`) under a title, with notes."""
    return table_io.format_table(headers, rows, title=title, notes=notes)


def _g(flops: float) -> str:
    return f"{flops / 1e9:,.3f}"


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:,.2f}"


def _mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2 ** 20:,.1f}"


def _bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{int(n)} B"


def _num(x: float | None, fmt: str = ",.2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _timing_stats(times: Sequence[float]) -> dict[str, float]:
    return {"mean_s": statistics.fmean(times), "median_s": statistics.median(times), "min_s": min(times),
            "max_s": max(times), "n": len(times)}


# ----- environment ------------------------------------------------------------------------------------------
def device_info() -> dict[str, Any]:
    import jax
    import flax
    dev = jax.devices()[0]
    info = {"platform": dev.platform, "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "process_count": jax.process_count(), "host": platform.node(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "flax": flax.__version__, "python": platform.python_version()}
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def peak_tflops(device_kind: str, override: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it came from): the flag, else the bf16 dense table, else unknown (MFU n/a)."""
    if override:
        return float(override), "--peak-tflops"
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_kind.lower():
            return value, f"bf16 dense peak of {key}"
    return None, f"unknown for {device_kind!r} (pass --peak-tflops)"


def device_memory() -> dict[str, float] | None:
    """Allocator statistics of device 0 (peak since process start), or None where the backend has none (CPU)."""
    import jax
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    return {k: float(stats[k]) for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit") if k in stats}


def _memory_analysis(compiled) -> dict[str, float] | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 — not every backend implements it
        return None
    if m is None:
        return None
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes")
    return {k: float(getattr(m, k)) for k in keys if hasattr(m, k)}


# ----- shapes shared by the sections ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Shapes:
    batch: int
    streams: int
    chunks: int
    video_tokens: int       # per chunk
    action_tokens: int      # per chunk
    guidance: bool

    @property
    def tokens(self) -> int:
        """Tokens per example in the training sequence."""
        return self.streams * self.chunks * (self.video_tokens + self.action_tokens)


def train_shapes(config, wan, wam, batch: int) -> Shapes:
    from wam_jax.training.objective import FlowConfig
    streams = 2 if FlowConfig.from_config(config.flow).context == "teacher_forcing" else 1
    return Shapes(batch, streams, int(config.chunks), wam.video_tokens(wan), wam.waypoints_per_chunk,
                  bool(config.guidance.enabled))


def synthetic_raw_batch(config, wan, wam, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random data of the config's shapes: latents [B, N·F, h, w, z], waypoints [B, N, K, A], ego states
    [B, N, 3] and, with guidance, intent embeddings [B, N, Lg, text_dim]."""
    rng = np.random.default_rng(seed)
    n = int(config.chunks)
    raw = {"latents": rng.standard_normal((batch, n * wam.latent_frames_per_chunk, wam.latent_height,
                                           wam.latent_width, wan.in_channels)).astype(np.float32),
           "waypoints": (np.asarray(config.action_norm.mean, np.float32)
                         + rng.standard_normal((batch, n, wam.waypoints_per_chunk, wam.action_dim)).astype(np.float32)
                         * np.asarray(config.action_norm.std, np.float32))}
    # Ego state (speed m/s, acceleration m/s², curvature 1/m) as every data source carries it.
    raw["ego_state"] = (np.array([10.0, 0.0, 0.0]) + rng.standard_normal((batch, n, 3))
                        * np.array([2.0, 0.5, 0.01])).astype(np.float32)
    if config.guidance.enabled:
        raw["guidance"] = rng.standard_normal((batch, n, wam.guidance_tokens, wan.text_dim)).astype(np.float32)
    return raw


def _time_calls(fn: Callable[[], Any], warmup: int, steps: int) -> list[float]:
    import jax
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


# ----- sections ---------------------------------------------------------------------------------------------
def flops_section(wan, wam, shapes: Shapes, xla: bool = False) -> tuple[dict, str]:
    from wam_jax.models.wan_dit import count_params
    from wam_jax.models import wam as wam_lib
    args = (wan, wam, shapes.batch, shapes.streams, shapes.chunks)
    masked = flop_breakdown(*args, guidance=shapes.guidance, attention="masked")
    dense = flop_breakdown(*args, guidance=shapes.guidance, attention="dense")
    tot_m, tot_d = sum(masked.values()), sum(dense.values())
    params = count_params(wam_lib.abstract_params(wan, wam))
    rows = [[k, _g(masked[k]), _g(dense[k]), f"{100 * masked[k] / tot_m:.1f}"] for k in masked]
    rows += [["forward total", _g(tot_m), _g(tot_d), "100.0"],
             ["train step (3x forward)", _g(3 * tot_m), _g(3 * tot_d), ""]]
    result = {"params": params, "tokens_per_example": shapes.tokens, "batch": shapes.batch,
              "streams": shapes.streams, "chunks": shapes.chunks, "forward_masked": tot_m, "forward_dense": tot_d,
              "train_step_masked": 3 * tot_m, "train_step_dense": 3 * tot_d,
              "breakdown_masked": masked, "breakdown_dense": dense}
    notes = [f"params {params:,}; batch {shapes.batch} x {shapes.tokens:,} tokens "
             f"(S={shapes.streams} streams x N={shapes.chunks} chunks x ({shapes.video_tokens} video + "
             f"{shapes.action_tokens} action)); guidance {'on' if shapes.guidance else 'off'}",
             "masked = pairs the attention rule allows (MFU uses it); dense = every pair (attention with a dense "
             "[L, L] mask, before issue 18)",
             "matmuls only, 2 FLOPs per multiply-add; remat recomputation not counted"]
    pairs = attention_pairs(wam, wan, shapes.streams, shapes.chunks)
    result["attention_pairs"] = pairs
    pair_table = format_table(
        "Self-attention (query, key) pairs per example and layer", ["count", "pairs", "x masked"],
        [[name, f"{pairs[key]:,}", f"{pairs[key] / pairs['masked']:.3f}"]
         for name, key in (("masked (the rule allows)", "masked"), ("computed: xla / cudnn (grouped)", "xla"),
                           (f"computed: splash ({pairs['block']}-token tiles)", "splash"),
                           ("dense (every pair)", "dense"))],
        ["computed = what the kernel multiplies; target <= 1.1 x masked (splash computes whole live tiles)"])
    if xla:
        xf = xla_forward_flops(wan, wam, shapes.batch, shapes.streams, shapes.chunks, shapes.guidance)
        result["xla_forward"] = xf
        notes.append(f"XLA, forward with layers unrolled: cost analysis {_g(xf['cost_analysis'])} GFLOP = "
                     f"{xf['cost_analysis'] / tot_d:.3f} x dense (adds elementwise ops); matmuls in the compiled "
                     f"HLO {_g(xf['dots_compiled'])} = {xf['dots_compiled'] / tot_d:.4f} x dense (GPU: library calls "
                     "such as cuBLAS/cuDNN are not HLO dots, so this undercounts there)")
    table = format_table("FLOPs (GFLOP per step, forward unless noted)",
                         ["component", "masked", "dense", "% masked"], rows, notes)
    return result, table + "\n\n" + pair_table


class _NoData:
    def get_state(self):
        return {}

    def set_state(self, state):
        pass


def _make_trainer(config, workdir: str):
    from wam_jax.training.trainer import Trainer
    # The bench brings its own batches (with guidance embeddings), so no data iterator or intent table.
    return Trainer(config, workdir, data=_NoData(), guidance_table=np.zeros((1,), np.float32))


def train_section(config, wan, wam, shapes: Shapes, steps: int, warmup: int, peak: float | None,
                  peak_source: str, with_input: bool) -> tuple[dict, list[str]]:
    import jax
    tables = []
    workdir = tempfile.mkdtemp(prefix="wam_bench_")
    trainer = _make_trainer(config, workdir)
    try:
        t0 = time.perf_counter()
        state = trainer.initial_state()
        jax.block_until_ready(state)
        init_s = time.perf_counter() - t0
        batch = trainer.device_batch(synthetic_raw_batch(config, wan, wam, shapes.batch))
        t0 = time.perf_counter()
        compiled = trainer._step_fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        holder = {"state": state}

        def step():
            holder["state"], metrics = compiled(holder["state"], batch)
            return holder["state"], metrics

        times = _time_calls(step, warmup, steps)
        stats = _timing_stats(times)
        step_s = stats["median_s"]
        fl_m = 3 * model_flops(wan, wam, shapes.batch, shapes.streams, shapes.chunks, guidance=shapes.guidance)
        fl_d = 3 * model_flops(wan, wam, shapes.batch, shapes.streams, shapes.chunks, guidance=shapes.guidance,
                               attention="dense")
        tflops_m, tflops_d = fl_m / step_s / 1e12, fl_d / step_s / 1e12
        mfu = tflops_m / peak if peak else None
        mem = device_memory()
        mem_compiled = _memory_analysis(compiled)
        result = {"step": stats, "init_s": init_s, "compile_s": compile_s,
                  "tokens_per_s": shapes.batch * shapes.tokens / step_s,
                  "examples_per_s": shapes.batch / step_s, "train_flops_masked": fl_m, "train_flops_dense": fl_d,
                  "tflops_masked": tflops_m, "tflops_dense": tflops_d, "peak_tflops": peak,
                  "peak_source": peak_source, "mfu": mfu, "device_memory": mem, "compiled_memory": mem_compiled,
                  "dtype": wan.dtype, "param_dtype": wan.param_dtype, "remat": wan.remat,
                  "attention": wan.attention, "scan_layers": wan.scan_layers, "batch": shapes.batch}
        rows = [["step time median (ms)", _ms(step_s)],
                ["step time mean / min / max (ms)", f"{_ms(stats['mean_s'])} / {_ms(stats['min_s'])} / "
                                                    f"{_ms(stats['max_s'])}"],
                ["compile (s)", f"{compile_s:.1f}"],
                ["tokens/s", _num(result["tokens_per_s"], ",.0f")],
                ["examples/s", _num(result["examples_per_s"], ",.3f")],
                ["achieved TFLOP/s (masked)", _num(tflops_m, ".3g")],
                ["achieved TFLOP/s (dense)", _num(tflops_d, ".3g")],
                ["peak TFLOP/s", _num(peak, ",.0f")],
                ["MFU (masked FLOPs / peak)", "n/a" if mfu is None else f"{100 * mfu:.1f}%"],
                ["peak device memory (MiB)", _mib(mem.get("peak_bytes_in_use")) if mem else "n/a"],
                ["device memory limit (MiB)", _mib(mem.get("bytes_limit")) if mem else "n/a"]]
        if mem_compiled:
            rows.append(["compiled step: args / temp (MiB)", f"{_mib(mem_compiled.get('argument_size_in_bytes'))}"
                                                             f" / {_mib(mem_compiled.get('temp_size_in_bytes'))}"])
        notes = [f"batch {shapes.batch}, {steps} timed steps after {warmup} warm-up; jitted Trainer step "
                 f"(loss, grads, AdamW, EMA) on synthetic latents already on device",
                 f"model: dtype {wan.dtype}, params {wan.param_dtype}, remat {wan.remat}, attention "
                 f"{wan.attention}, scan_layers {wan.scan_layers}; peak: {peak_source}",
                 "peak device memory is the allocator's high-water mark since process start (n/a on CPU)"]
        if peak and wan.dtype != "bfloat16":
            notes.append(f"MFU is against a bf16 peak while the model computes in {wan.dtype}")
        tables.append(format_table("Train step", ["metric", "value"], rows, notes))
        if with_input:
            result["input"], table = _input_section(config, trainer, compiled, holder, steps, warmup, step_s)
            tables.append(table)
        return result, tables
    finally:
        trainer.checkpoints.close()
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)


def _input_section(config, trainer, compiled, holder, steps: int, warmup: int, step_s: float) -> tuple[dict, str]:
    """Real input pipeline: time of next(iterator) + host→device, and the trainer's loop (fetch, then dispatch
    the step asynchronously) against the pure step time."""
    import jax
    from wam_jax.data import make_iterator
    from wam_jax.data import prepare_batch
    try:
        it = make_iterator(config, jax.process_index(), jax.process_count())
    except Exception as err:  # noqa: BLE001 — report and move on: the input pipeline is optional
        msg = f"input pipeline skipped: could not open config.data ({type(err).__name__}: {err})"
        return {"skipped": msg}, "Input pipeline\n  " + msg
    table_cache: dict[str, Any] = {}

    def fetch():
        raw = next(it)
        table = None
        if config.guidance.enabled and "guidance" not in raw:
            if "table" not in table_cache:
                from wam_jax import guidance
                table_cache["table"] = guidance.intent_table(config)
            table = table_cache["table"]
        batch = prepare_batch(raw, config, trainer.action_norm, table)
        return {k: jax.make_array_from_process_local_data(trainer._batch_sharding(v), v) for k, v in batch.items()}

    fetch_times = _time_calls(fetch, max(warmup, 1), steps)
    input_s = statistics.median(fetch_times)
    for _ in range(warmup):
        holder["state"], _ = compiled(holder["state"], fetch())
    jax.block_until_ready(holder["state"])
    start = time.perf_counter()
    for _ in range(steps):                       # as Trainer.run: fetch, dispatch, no block per step
        holder["state"], metrics = compiled(holder["state"], fetch())
    jax.block_until_ready((holder["state"], metrics))
    loop_s = (time.perf_counter() - start) / steps
    result = {"source": config.data.source, "input_s": input_s, "step_s": step_s, "loop_s": loop_s,
              "input_over_step": input_s / step_s, "serial_share": input_s / (input_s + step_s),
              "exposed_share": max(0.0, loop_s - step_s) / loop_s}
    rows = [["input: next(iterator) + to device (ms)", _ms(input_s)],
            ["step alone, synthetic batch (ms)", _ms(step_s)],
            ["trainer loop per step (ms)", _ms(loop_s)],
            ["input time / step time", f"{100 * result['input_over_step']:.1f}%"],
            ["input share if serial", f"{100 * result['serial_share']:.1f}%"],
            ["input time exposed in the loop", f"{100 * result['exposed_share']:.1f}%"]]
    notes = [f"config.data.source={config.data.source}; loop = fetch + asynchronous step dispatch over {steps} steps"]
    return result, format_table("Input pipeline", ["metric", "value"], rows, notes)


def rollout_section(config, wan, wam, steps: int, warmup: int, batch: int, kv_chunks: int) -> tuple[dict, list[str]]:
    import jax
    from wam_jax.rollout import kv_memory
    from wam_jax.models import wam as wam_lib
    from wam_jax.rollout.engine import RolloutEngine, SamplerConfig, run_rollout, stage_grids

    sampler = SamplerConfig.from_config(config.sampler)
    base_mem = kv_memory.MemoryConfig.from_config(config.memory)
    lv, k = wam.video_tokens(wan), wam.waypoints_per_chunk
    per_token = 2 * wan.num_layers * wan.dim * np.dtype(wan.compute_dtype).itemsize     # k + v, all layers
    ctx = int(config.rollout.context_chunks)
    chunks = warmup + steps if warmup > 0 else steps + 1     # the first generated chunk compiles
    drop = chunks - steps
    params = jax.jit(lambda r: wam_lib.init_params(wan, wam, r))(jax.random.key(0))
    rng = np.random.default_rng(1)
    video = rng.standard_normal((batch, ctx, wam.latent_frames_per_chunk, wam.latent_height, wam.latent_width,
                                 wan.in_channels)).astype(np.float32)
    actions = rng.standard_normal((batch, ctx, k, wam.action_dim)).astype(np.float32)
    guid = (jax.numpy.asarray(rng.standard_normal((batch, 1, wam.guidance_tokens, wan.text_dim)), jax.numpy.float32)
            if config.guidance.enabled else None)
    gfn = (lambda c, _: guid) if guid is not None else None
    # One model evaluation per grid row (two with Heun): joint max(Sv, Sa), video_then_action Sv + Sa.
    evals = sum(len(gv) for _, gv, _ in stage_grids(sampler)) * (2 if sampler.solver == "heun" else 1)
    notes_extra = []
    modes = {}
    mem_limit = (device_memory() or {}).get("bytes_limit")
    for mode in ("full", "selective"):
        mem = dataclasses.replace(base_mem, mode=mode)
        if mode == "full":
            need = ctx + chunks
            horizon = max(mem.max_chunks, need)
            # Keep the cache to 30% of the device (the commit donates it, but the model and activations need room).
            if mem_limit and horizon * (lv + k) * per_token * batch > 0.3 * mem_limit:
                horizon = max(need, int(0.3 * mem_limit // ((lv + k) * per_token * batch)))
                notes_extra.append(f"full cache clamped to {horizon} chunks: config max_chunks {mem.max_chunks} "
                                   "would take over 30% of the device memory; latency "
                                   "grows with the slots, so a real full cache is slower than this row")
            mem = dataclasses.replace(mem, max_chunks=horizon)
        engine = RolloutEngine(wan, wam, sampler, mem)
        t0 = time.perf_counter()
        result = run_rollout(engine, params, video, actions, chunks, jax.random.key(2), guidance_fn=gfn)
        total_s = time.perf_counter() - t0
        timed = result.timings[drop:]
        stages = list(dict.fromkeys(s for t in timed for s in t))
        per_stage = {s: statistics.fmean(t.get(s, 0.0) for t in timed) for s in stages}
        per_chunk = statistics.fmean(sum(t.values()) for t in timed)
        slots = engine.sizes.slots
        eval_flops = model_flops(wan, wam, batch, 1, 1, guidance=guid is not None, past_tokens=slots,
                                 attention="dense")
        denoise_s = sum(v for s, v in per_stage.items() if "denois" in s)
        modes[mode] = {"stages_s": per_stage, "chunk_s": per_chunk, "slots": slots,
                       "evaluations_per_chunk": evals, "eval_flops_dense": eval_flops,
                       "denoise_tflops": evals * eval_flops / denoise_s / 1e12 if denoise_s else None,
                       "allocated_bytes": result.memory[-1]["allocated_bytes"],
                       "first_chunk_s": sum(result.timings[0].values()), "wall_s": total_s,
                       "timed_chunks": len(timed)}
    stage_names = list(dict.fromkeys(s for m in modes.values() for s in m["stages_s"]))
    rows = []
    for mode, m in modes.items():
        rows.append([mode, f"{m['slots']:,}"] + [_ms(m["stages_s"].get(s)) for s in stage_names]
                    + [_ms(m["chunk_s"]), _num(m["denoise_tflops"], ".3g")])
    notes = [f"batch {batch}, sampler {sampler.schedule}/{sampler.solver} video {sampler.video_steps} / action "
             f"{sampler.action_steps} steps = {evals} model evaluations per chunk (+1 for the cache update)",
             f"{steps} timed chunks after {drop} warm-up chunk(s) and {ctx} context chunk(s); attention reads every "
             "allocated slot (masked), so latency does not depend on the chunk index",
             "guidance = materialising a precomputed intent embedding (text encoder / VLM time not included)",
             "TFLOP/s of the denoising stages with dense attention FLOPs over all slots"] + notes_extra
    latency = format_table("Rollout latency per chunk (ms)", ["memory", "KV slots"] + stage_names
                           + ["total", "TFLOP/s"], rows, notes)

    full_bytes = kv_chunks * (lv + k) * per_token * batch
    sel_bytes = (base_mem.video_budget + base_mem.action_budget) * per_token * batch
    kv = {"bytes_per_token": per_token * batch, "kv_chunks": kv_chunks, "full_bytes": full_bytes,
          "selective_bytes": sel_bytes, "reduction": full_bytes / sel_bytes if sel_bytes else None,
          "selective_tokens": base_mem.video_budget + base_mem.action_budget, "full_tokens": kv_chunks * (lv + k)}
    rows = [[f"full cache, {kv_chunks} chunks", f"{kv['full_tokens']:,}", _mib(full_bytes), "1.0x"],
            [f"selective (budgets {base_mem.video_budget} video + {base_mem.action_budget} action)",
             f"{kv['selective_tokens']:,}", _mib(sel_bytes),
             "n/a" if not kv["reduction"] else f"{kv['reduction']:.1f}x"]]
    for mode, m in modes.items():
        rows.append([f"measured: {mode} cache as allocated in this run", f"{m['slots']:,}",
                     _mib(m["allocated_bytes"]), f"{full_bytes / m['allocated_bytes']:.1f}x"])
    notes = [f"bytes = tokens x 2 (k, v) x {wan.num_layers} layers x {wan.dim} x "
             f"{np.dtype(wan.compute_dtype).itemsize} B ({np.dtype(wan.compute_dtype).name}) x batch {batch}",
             "reduction = full cache at that horizon / this row"]
    memory = format_table("KV memory", ["cache", "tokens", "MiB", "reduction"], rows, notes)
    return {"modes": modes, "kv_memory": kv, "batch": batch, "sampler": dataclasses.asdict(sampler)}, [latency, memory]


# 64 … 37,440 tokens: 37,440 = 6 chunks of the 1.3B config's 6,240 video tokens (the old selective budget).
MEMORY_BUDGETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 37440)
# Growth exponents are fitted over all sizes and from these sizes up: per-call overhead dominates small pools,
# and on a CPU the pool (k + v) leaves the last-level cache between ~1k and ~8k tokens at width 1536.
FIT_FROM_TOKENS = (1024, 8192)


def pool_commit_times(mode: str, budgets: Sequence[int], heads: int, head_dim: int, new_tokens: int, queries: int,
                      dtype, steps: int, warmup: int, seed: int = 0) -> list[float]:
    """Median seconds of one commit into ONE pool of each size (one layer, batch 1, the pool full), jitted
    with the pool donated and fed back (steady state). full: the in-place write of the new tokens."""
    import functools
    import jax
    import jax.numpy as jnp
    from wam_jax.rollout import kv_memory
    rng = np.random.default_rng(seed)
    rows = lambda m: jnp.asarray(rng.standard_normal((1, 1, m, heads, head_dim)), dtype)
    if mode == "full":
        fn = jax.jit(lambda pool, new, q, at: {key: jax.lax.dynamic_update_slice_in_dim(pool[key], new[key], at, 2)
                                               for key in pool}, donate_argnums=0)
    else:
        update = functools.partial(kv_memory.update_pool, mode=mode)
        fn = jax.jit(lambda pool, new, q, at: update(pool, new, q), donate_argnums=0)
    out = []
    for p in budgets:
        holder = {"pool": {"k": rows(p), "v": rows(p), "valid": jnp.ones((1, 1, p), bool),
                           "chunk": jnp.asarray(np.arange(p, dtype=np.int32) // new_tokens)[None, None]}}
        new = {"k": rows(new_tokens), "v": rows(new_tokens), "valid": jnp.ones((1, 1, new_tokens), bool),
               "chunk": jnp.full((1, 1, new_tokens), p, jnp.int32)}
        q, at = rows(queries), jnp.int32(p - new_tokens)

        def call():
            holder["pool"] = fn(holder["pool"], new, q, at)
            return holder["pool"]

        out.append(statistics.median(_time_calls(call, max(warmup, 1), steps)))
    return out


def growth_exponent(sizes: Sequence[int], seconds: Sequence[float], from_size: int = 0) -> float | None:
    """Least-squares slope of log(time) against log(size) over sizes ≥ from_size (None under 2 points)."""
    pts = [(math.log(n), math.log(t)) for n, t in zip(sizes, seconds) if n >= from_size and t > 0]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def memory_section(config, wan, wam, steps: int, warmup: int, batch: int, kv_chunks: int,
                   budgets: Sequence[int] = MEMORY_BUDGETS) -> tuple[dict, list[str]]:
    """KV memory modes: commit time per pool against the pool size (growth exponent), the per-chunk latency
    split of a rollout in each mode, the compiled commit's temporaries, and KV bytes at `kv_chunks` chunks."""
    import jax
    import jax.numpy as jnp
    from wam_jax.models import wam as wam_lib
    from wam_jax.rollout import engine as engine_lib
    from wam_jax.rollout import kv_memory

    base_mem = kv_memory.MemoryConfig.from_config(config.memory)
    lv, k = wam.video_tokens(wan), wam.waypoints_per_chunk
    heads, head_dim, dtype = wan.num_attention_heads, wan.attention_head_dim, wan.compute_dtype
    budgets = sorted(int(b) for b in budgets)
    n_new = max(1, min(lv, budgets[0] // 2))
    times = {m: pool_commit_times(m, budgets, heads, head_dim, n_new, lv + k, dtype, steps, warmup)
             for m in kv_memory.MODES}
    fits = {m: {"all": growth_exponent(budgets, t),
                **{f">={n}": growth_exponent(budgets, t, n) for n in FIT_FROM_TOKENS}} for m, t in times.items()}
    rows = [[f"{b:,}"] + [_ms(times[m][i]) for m in kv_memory.MODES] for i, b in enumerate(budgets)]
    rows.append(["growth exponent (all sizes)"] + [_num(fits[m]["all"], ".2f") for m in kv_memory.MODES])
    for n in FIT_FROM_TOKENS:
        rows.append([f"growth exponent (>= {n:,})"] + [_num(fits[m][f">={n}"], ".2f") for m in kv_memory.MODES])
    notes = [f"one pool of one layer, batch 1, full; {n_new} new tokens, {lv + k} queries (one chunk), "
             f"{heads} heads x {head_dim}, {np.dtype(dtype).name}; median of {steps} call(s) after warm-up; "
             "pool donated and fed back",
             "growth exponent = least-squares slope of log(time) vs log(pool tokens); the issue asks <= 1.2 "
             "(the old greedy MMR measured 2.1); pool k + v bytes at the largest size: "
             f"{_bytes(2 * budgets[-1] * heads * head_dim * np.dtype(dtype).itemsize)}",
             "full = in-place write only (its cost is paid in attention over every slot, see the next table)"]
    scaling = format_table("KV commit per pool (ms) vs pool size (tokens)", ["pool tokens", *kv_memory.MODES],
                           rows, notes)

    # Per-chunk latency split per mode: video and action denoising timed apart.
    sampler = engine_lib.SamplerConfig.from_config(config.sampler)
    split_note = []
    if sampler.schedule != "video_then_action" and "video_then_action" in engine_lib.SCHEDULES:
        sampler = dataclasses.replace(sampler, schedule="video_then_action")
        split_note = [f"sampler schedule {config.sampler.schedule} -> video_then_action so that video and "
                      "action denoising are timed apart (same step counts)"]
    ctx = int(config.rollout.context_chunks)
    chunks = warmup + steps if warmup > 0 else steps + 1          # the first generated chunk compiles
    params = jax.jit(lambda r: wam_lib.init_params(wan, wam, r))(jax.random.key(0))
    rng = np.random.default_rng(1)
    video = rng.standard_normal((batch, ctx, wam.latent_frames_per_chunk, wam.latent_height, wam.latent_width,
                                 wan.in_channels)).astype(np.float32)
    actions = rng.standard_normal((batch, ctx, k, wam.action_dim)).astype(np.float32)
    guid = (jnp.asarray(rng.standard_normal((batch, 1, wam.guidance_tokens, wan.text_dim)), jnp.float32)
            if config.guidance.enabled else None)
    gfn = (lambda c, _: guid) if guid is not None else None
    horizon = max(kv_chunks, ctx + chunks)
    per_token = 2 * wan.num_layers * wan.dim * np.dtype(dtype).itemsize * batch
    mem_limit = (device_memory() or {}).get("bytes_limit")
    if mem_limit and horizon * (lv + k) * per_token > 0.5 * mem_limit:
        horizon = max(ctx + chunks, int(0.5 * mem_limit // ((lv + k) * per_token)))
        split_note.append(f"full cache clamped to {horizon} chunks (half the device memory); a {kv_chunks}-chunk "
                          "full cache attends over more slots, so its real latency is higher than this row")
    modes, stage_names = {}, []
    for mode in kv_memory.MODES:
        mem = dataclasses.replace(base_mem, mode=mode, max_chunks=horizon)
        eng = engine_lib.RolloutEngine(wan, wam, sampler, mem)
        result = engine_lib.run_rollout(eng, params, video, actions, chunks, jax.random.key(2), guidance_fn=gfn)
        timed = result.timings[chunks - steps:]
        stages = list(dict.fromkeys(s for t in timed for s in t))
        stage_names += [s for s in stages if s not in stage_names]
        cache_shape = jax.eval_shape(lambda: eng.init_cache(batch))
        compiled = eng._commit.lower(params, cache_shape, jnp.int32(ctx), jnp.asarray(video[:, 0]), jnp.float32(0.0),
                                     jnp.asarray(actions[:, 0]), guid, None).compile()
        modes[mode] = {"slots": eng.sizes.slots, "stages_s": {s: statistics.fmean(t.get(s, 0.0) for t in timed)
                                                              for s in stages},
                       "chunk_s": statistics.fmean(sum(t.values()) for t in timed), "timed_chunks": len(timed),
                       "commit_compiled": _memory_analysis(compiled),
                       "tokens_after": result.memory[-1]["tokens"]}
    rows = []
    for mode, m in modes.items():
        temp = (m["commit_compiled"] or {}).get("temp_size_in_bytes")
        rows.append([mode, f"{m['slots']:,}"] + [_ms(m["stages_s"].get(s)) for s in stage_names]
                    + [_ms(m["chunk_s"]), _bytes(temp)])
    notes = [f"batch {batch}; {steps} timed chunk(s) after {chunks - steps} warm-up chunk(s) and {ctx} context "
             f"chunk(s); sampler video {sampler.video_steps} / action {sampler.action_steps} {sampler.solver} steps",
             f"full sized for {horizon} chunks; fifo / selective pools {base_mem.video_budget} video + "
             f"{base_mem.action_budget} action tokens (lambda {base_mem.tradeoff}); static shapes, so every "
             "chunk costs the same whether the pools are full or not",
             "commit temp = XLA's temporary buffers of the compiled commit (the clean pass + the memory update); "
             "the cache is donated (updated in place)"] + split_note
    latency = format_table("Rollout latency per chunk by memory mode (ms)",
                           ["memory", "KV slots", *stage_names, "total", "commit temp"], rows, notes)

    kv = {}
    for mode in kv_memory.MODES:
        mem = dataclasses.replace(base_mem, mode=mode, max_chunks=kv_chunks)
        sizes = kv_memory.pool_sizes(mem, lv, k)
        shape = jax.eval_shape(lambda: kv_memory.init_cache(sizes, wan.num_layers, batch, heads, head_dim, dtype))
        kv[mode] = {"tokens": sizes.slots, "bytes": kv_memory.cache_bytes(shape)}
    for mode in kv:
        kv[mode]["reduction"] = kv["full"]["bytes"] / kv[mode]["bytes"]
    rows = [[mode, f"{v['tokens']:,}", _bytes(v["bytes"]), f"{v['bytes'] / 1e9:.4g}", f"{v['reduction']:.1f}x"]
            for mode, v in kv.items()]
    notes = [f"after {kv_chunks} chunks ({kv_chunks * 4} s): k + v, {wan.num_layers} layers x {heads} heads x "
             f"{head_dim} x {np.dtype(dtype).itemsize} B x batch {batch} per token (validity / chunk ids excluded)",
             "paper anchor (Wan2.2-5B, 300 s): full 3.07 GB vs selective 0.25 GB (12x)"]
    memory = format_table(f"KV memory at {kv_chunks} chunks by mode", ["memory", "tokens/layer", "bytes", "GB",
                                                                        "reduction vs full"], rows, notes)
    result = {"pool_commit": {"budgets": budgets, "new_tokens": n_new, "queries": lv + k, "seconds": times,
                              "exponent": fits},
              "latency": modes, "kv_bytes": kv, "kv_chunks": kv_chunks, "batch": batch,
              "sampler": dataclasses.asdict(sampler)}
    return result, [scaling, latency, memory]


def torch_section(config, wan, wam, batch: int, steps: int, warmup: int, compile_torch: bool,
                  threads: int | None = None) -> tuple[dict, str]:
    """diffusers WanTransformer3DModel vs our Flax WanTransformer, random weights, on the clip's latents."""
    try:
        import torch
        from diffusers import WanTransformer3DModel
    except ImportError as err:
        msg = f"PyTorch side by side skipped: {err} (pip install 'wam-jax[torch]')"
        return {"skipped": msg}, "PyTorch vs JAX (Wan DiT, video only)\n  " + msg
    import jax
    import jax.numpy as jnp
    from wam_jax.models.wan_dit import WanTransformer

    if threads:
        torch.set_num_threads(threads)
    torch_gpu = torch.cuda.is_available()
    jax_gpu = jax.default_backend() == "gpu"
    half = torch_gpu and jax_gpu
    frames = int(config.chunks) * wam.latent_frames_per_chunk
    h, w, z = wam.latent_height, wam.latent_width, wan.in_channels
    text_len = int(config.chunks) * wam.guidance_tokens if config.guidance.enabled else 1
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((batch, frames, h, w, z)).astype(np.float32)
    context = rng.standard_normal((batch, text_len, wan.text_dim)).astype(np.float32)
    tsteps = np.full((batch,), 500.0, np.float32)
    flops = wan_video_flops(wan, batch, frames, h, w, text_len)

    # JAX
    jwan = dataclasses.replace(wan, dtype="bfloat16" if half else "float32")
    model = WanTransformer(jwan)
    params = jax.jit(lambda r: model.init(r, jnp.asarray(latents[:1]), jnp.asarray(tsteps[:1]),
                                          jnp.asarray(context[:1]))["params"])(jax.random.key(0))
    from flax import linen as nn
    params = nn.unbox(params)
    xs = (jnp.asarray(latents), jnp.asarray(tsteps), jnp.asarray(context))
    fwd = jax.jit(lambda p, *x: model.apply({"params": p}, *x))
    loss = lambda p, *x: jnp.mean(jnp.square(model.apply({"params": p}, *x)))
    fwd_bwd = jax.jit(jax.value_and_grad(loss))
    jax_fwd = statistics.median(_time_calls(lambda: fwd(params, *xs), max(warmup, 1), steps))
    jax_fb = statistics.median(_time_calls(lambda: fwd_bwd(params, *xs), max(warmup, 1), steps))
    del params

    # PyTorch
    device = torch.device("cuda" if torch_gpu else "cpu")
    dtype = torch.bfloat16 if half else torch.float32
    cfg = {k: v for k, v in wan.to_diffusers().items() if not k.startswith("_")}
    cfg["patch_size"] = tuple(cfg["patch_size"])
    torch.manual_seed(0)
    tmodel = WanTransformer3DModel(**cfg).to(device=device)
    if dtype != torch.float32:
        # As from_pretrained(torch_dtype=...) does: half precision except the modules diffusers keeps in float32.
        keep = set(getattr(WanTransformer3DModel, "_keep_in_fp32_modules", None) or ())
        from diffusers.utils import logging as diffusers_logging
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()      # its warning is about .to(); the loop below does the right thing
        try:
            tmodel.to(dtype)
        finally:
            diffusers_logging.set_verbosity(level)
        for name, tensor in [*tmodel.named_parameters(), *tmodel.named_buffers()]:
            if keep & set(name.split(".")) and tensor.is_floating_point():
                tensor.data = tensor.data.float()
    checkpointing = wan.remat != "none"
    if checkpointing:
        tmodel.enable_gradient_checkpointing()
    n_params = sum(p.numel() for p in tmodel.parameters())
    run = torch.compile(tmodel) if (compile_torch and torch_gpu) else tmodel
    tl = torch.from_numpy(latents.transpose(0, 4, 1, 2, 3).copy()).to(device, dtype)
    tt = torch.from_numpy(tsteps).to(device)
    tc = torch.from_numpy(context).to(device, dtype)
    sync = torch.cuda.synchronize if torch_gpu else (lambda: None)
    if torch_gpu:
        torch.cuda.reset_peak_memory_stats()

    def t_fwd():
        with torch.no_grad():
            run(tl, tt, tc, return_dict=False)[0]
        sync()

    def t_fb():
        out = run(tl, tt, tc, return_dict=False)[0]
        out.float().square().mean().backward()
        tmodel.zero_grad(set_to_none=True)
        sync()

    def timed(fn):
        for _ in range(max(warmup, 1)):
            fn()
        ts = []
        for _ in range(steps):
            s = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - s)
        return statistics.median(ts)

    tmodel.train()       # diffusers Wan has no dropout; train() only enables gradient checkpointing
    torch_fwd, torch_fb = timed(t_fwd), timed(t_fb)
    torch_peak = float(torch.cuda.max_memory_allocated()) if torch_gpu else None
    result = {"latents": [batch, frames, h, w, z], "text_len": text_len, "flops_forward": flops,
              "params_torch": n_params, "jax": {"forward_s": jax_fwd, "forward_backward_s": jax_fb,
                                                "dtype": jwan.dtype, "remat": wan.remat},
              "torch": {"forward_s": torch_fwd, "forward_backward_s": torch_fb, "dtype": str(dtype),
                        "compile": bool(compile_torch and torch_gpu), "gradient_checkpointing": checkpointing,
                        "device": str(device), "peak_memory_bytes": torch_peak},
              "ratio_forward": torch_fwd / jax_fwd, "ratio_forward_backward": torch_fb / jax_fb}
    rows = [["forward", _ms(jax_fwd), _ms(torch_fwd), f"{torch_fwd / jax_fwd:.2f}",
             _num(flops / jax_fwd / 1e12, ".3g"), _num(flops / torch_fwd / 1e12, ".3g")],
            ["forward+backward", _ms(jax_fb), _ms(torch_fb), f"{torch_fb / jax_fb:.2f}",
             _num(3 * flops / jax_fb / 1e12, ".3g"), _num(3 * flops / torch_fb / 1e12, ".3g")]]
    notes = [f"latents [B={batch}, T={frames}, h={h}, w={w}, z={z}] (the clip's N x F frames), text context "
             f"{text_len} tokens, full attention; {n_params:,} params; random weights on each side",
             f"JAX: Flax WanTransformer, {jwan.dtype}, remat {wan.remat}; PyTorch: diffusers WanTransformer3DModel "
             f"on {device}, {str(dtype).replace('torch.', '')}, SDPA, torch.compile "
             f"{'on' if result['torch']['compile'] else 'off'}, gradient checkpointing "
             f"{'on (every block)' if checkpointing else 'off'}",
             "ratio = PyTorch time / JAX time (> 1: JAX faster); loss = mean(out^2); median of timed runs"]
    if not torch_gpu:
        notes.append(f"PyTorch CPU threads: {torch.get_num_threads()} (--torch-threads); on a loaded machine "
                     "OpenMP threads wait on each other and small models slow down many times")
    if torch_gpu != jax_gpu:
        notes.append(f"JAX runs on {jax.default_backend()}, PyTorch on {device}: the ratio compares devices too")
    if torch_peak is not None:
        notes.append(f"PyTorch peak CUDA memory {_mib(torch_peak)} MiB")
    return result, format_table("PyTorch vs JAX (Wan DiT, video only; ms)",
                                ["pass", "JAX", "PyTorch", "ratio", "JAX TFLOP/s", "PyTorch TFLOP/s"], rows, notes)


# ----- CLI --------------------------------------------------------------------------------------------------
def parse_sections(text: str) -> tuple[str, ...]:
    if text == "all":
        return SECTIONS
    if text in ("flops", "none", ""):
        return ()
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"--what: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}, 'all' or "
                         "'flops' (the FLOP table alone)")
    return chosen


def header(argv: Sequence[str], info: dict, config_spec: str) -> str:
    lines = ["wam-jax bench",
             f"  command : python -m wam_jax bench {shlex.join(argv)}",
             f"  date    : {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
             f"  device  : {info['device_kind']} ({info['platform']}) x{info['device_count']}, "
             f"{info['process_count']} process(es), host {info['host']} ({info['cpu_count']} CPUs)",
             f"  versions: jax {info['jax']}, flax {info['flax']}, torch {info['torch'] or 'not installed'}, "
             f"python {info['python']}",
             f"  config  : {config_spec}"]
    env = {k: os.environ[k] for k in ENV_VARS if k in os.environ}
    if env:
        lines.append(f"  env     : {' '.join(f'{k}={v}' for k, v in env.items())}")
    return "\n".join(lines)


def run(argv: Sequence[str], out=None) -> dict:
    """Runs the benchmark described by `argv` (the CLI's arguments), prints tables, returns the results."""
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m wam_jax bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    wam_cli.add_config_args(parser, config_required=True)
    parser.add_argument("--steps", type=int, default=10, help="timed steps / chunks / calls per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (compile included)")
    parser.add_argument("--batch", type=int, default=None, help="train batch (default config.train.batch_size)")
    parser.add_argument("--what", default=",".join(DEFAULT_SECTIONS),
                        help=f"comma list of {', '.join(SECTIONS)}; 'all'; 'flops' for the FLOP table alone")
    parser.add_argument("--rollout-batch", type=int, default=1, help="batch of the rollout section")
    parser.add_argument("--kv-chunks", type=int, default=75, help="horizon for the KV memory comparison")
    parser.add_argument("--memory-budgets", default=",".join(map(str, MEMORY_BUDGETS)),
                        help="pool sizes (tokens) for the memory section's commit timing")
    parser.add_argument("--torch-batch", type=int, default=1, help="batch of the PyTorch side by side")
    parser.add_argument("--torch-compile", action="store_true", help="torch.compile the diffusers model (GPU)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads for the CPU side by side (default torch's own choice)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default from the device)")
    parser.add_argument("--xla-flops", action="store_true",
                        help="also compile the forward with unrolled layers and print XLA's FLOP count")
    parser.add_argument("--json", default=None, metavar="PATH", help="write all numbers as JSON")
    args = parser.parse_args(list(argv))
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    sections = parse_sections(args.what)
    if "torch" in sections:
        # JAX would otherwise reserve 75% of the GPU before PyTorch allocates anything.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    from wam_jax.config import load_config
    from wam_jax.models import wam as wam_lib

    overrides = list(args.set)
    if args.batch is not None:
        overrides.append(f"train.batch_size={args.batch}")
    config = load_config(args.config, overrides)
    with config.unlocked():
        config.init = "scratch"          # random weights: benchmarks need no checkpoint
    wan, wam = wam_lib.build_configs(config)
    info = device_info()
    peak, peak_source = peak_tflops(info["device_kind"], args.peak_tflops)
    shapes = train_shapes(config, wan, wam, int(config.train.batch_size))

    def emit(text: str):
        print(text + "\n", file=out, flush=True)

    emit(header(argv, info, args.config + (" " + " ".join(f"--set {s}" for s in args.set) if args.set else "")))
    results: dict[str, Any] = {
        "meta": {"command": "python -m wam_jax bench " + shlex.join(argv),
                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **info,
                 "config": args.config, "overrides": list(args.set), "steps": args.steps, "warmup": args.warmup,
                 "sections": list(sections), "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ}}}
    results["flops"], table = flops_section(wan, wam, shapes, xla=args.xla_flops)
    emit(table)
    if "train" in sections or "input" in sections:
        results["train"], tables = train_section(config, wan, wam, shapes, args.steps, args.warmup, peak,
                                                 peak_source, with_input="input" in sections)
        if "input" in results["train"]:
            results["input"] = results["train"].pop("input")
        for t in tables:
            emit(t)
    if "rollout" in sections:
        results["rollout"], tables = rollout_section(config, wan, wam, args.steps, args.warmup, args.rollout_batch,
                                                     args.kv_chunks)
        for t in tables:
            emit(t)
    if "memory" in sections:
        budgets = [int(b) for b in args.memory_budgets.split(",") if b.strip()]
        results["memory"], tables = memory_section(config, wan, wam, args.steps, args.warmup, args.rollout_batch,
                                                   args.kv_chunks, budgets)
        for t in tables:
            emit(t)
    if "torch" in sections:
        results["torch"], table = torch_section(config, wan, wam, args.torch_batch, args.steps, args.warmup,
                                                args.torch_compile, args.torch_threads)
        emit(table)
    mem = device_memory()
    if mem:
        results["meta"]["device_memory_end"] = mem
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        table_io.write_json(args.json, results, indent=2)
        emit(f"wrote {args.json}")
    return results


@wam_cli.user_errors
def cli(argv: list[str]) -> int:
    run(argv)
    return 0
