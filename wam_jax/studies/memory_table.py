"""The paper's Table 5 at demo scale: full / FIFO / selective KV memory, same model, same budget.

    python -m wam_jax.studies memory-table --out out/studies/memory_table [--seeds 0,1,2] [--steps 1500]
        [--clips 40] [--chunks 6] [--heldout 8] [--budget-chunks 2] [--set KEY=VALUE ...]

Per seed, experiments/drivewam_highway.py is trained on whole clips of `chunks` × 4 s (the training window is
the whole clip, so the model learns to use every earlier chunk), then rolled over `heldout` held-out clips of
the same length once per memory mode. At chunk c the memory holds what was observed, the real chunks 0 … c−1
(committed as they arrive); the model samples chunk c (video + 8 waypoints over 4 s) from noise, with the same
noise in every mode, and is scored against the expert's waypoints: ADE / FDE at 4 s in the chunk's own frame.
fifo and selective keep `budget_chunks` chunks of tokens per pool; full keeps everything. Chunks whose history
exceeds the budget ("bounded" columns) are where the modes can differ. Results: OUT/table.md, OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

EXPERIMENT = "experiments/drivewam_highway.py"
MODES = ("full", "fifo", "selective")


def _log(msg: str) -> None:
    print(msg, flush=True)


def seed_config(out: str, seed: int, steps: int, clips: int, chunks: int, overrides=(), heldout: int = 3):
    from wam_jax.config import load_config
    data_dir = os.path.join(out, "data", "data")
    config = load_config(f"{EXPERIMENT}:seed={seed},steps={steps},clips={clips},data_dir={data_dir}",
                         [f"chunks={chunks}", f"dataset.num_chunks={chunks}", f"dataset.heldout_clips={heldout}",
                          *overrides])
    with config.unlocked():
        config.train.checkpoint_every = min(steps, 250)      # a killed run resumes (Trainer.run restores)
    return config


def train_seed(config, workdir: str) -> None:
    """Trains to config.train.steps, resuming from the latest checkpoint in workdir (a finished run is a no-op)."""
    from wam_jax.training.trainer import Trainer
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    _log(f"[train] seed {config.seed}: {config.train.steps} steps on {config.chunks}-chunk clips → {workdir}")
    Trainer(config, workdir).run()
    _log(f"[train] done ({time.perf_counter() - start:.0f} s)")


def heldout_clips(config, heldout_dir: str):
    """[(latents [1, N, F, h, w, z], normalised actions [1, N, K, A], waypoints [N, K, 3], intents)] per clip."""
    from data_pipelines import pipeline
    from wam_jax.models import latents
    from wam_jax.experiment import Experiment
    exp = Experiment(config)
    f = exp.wam.latent_frames_per_chunk
    out = []
    for clip in pipeline.iter_clips(heldout_dir):
        n = len(clip.waypoints)
        lat = latents.encode_frames(clip.frames[None], config)
        lat = lat.reshape(1, n, f, *lat.shape[2:])
        actions = exp.action_norm.normalize(clip.waypoints[None].astype(np.float32))
        out.append((lat, actions, np.asarray(clip.waypoints, np.float64), clip.intent))
    return out


def observed_rollout(engine, params, lat, actions, guidance_fn, rng):
    """Chunk by chunk: commit the real chunk c − 1, sample chunk c. Returns normalised actions [N − 1, K, A]
    of chunks 1 … N − 1 and the memory report after the last commit."""
    import jax
    import jax.numpy as jnp
    from wam_jax.rollout import kv_memory
    n = actions.shape[1]
    cache = engine.init_cache(1)
    planned = []
    for c in range(1, n):
        cache = engine.commit(params, cache, c - 1, jnp.asarray(lat[:, c - 1]), jnp.asarray(actions[:, c - 1]),
                              guidance_fn(c - 1))
        _, a = engine.denoise(params, cache, c, guidance_fn(c), jax.random.fold_in(rng, c))
        planned.append(np.asarray(a[0]))
    return np.stack(planned), kv_memory.memory_report(cache)


def evaluate_seed(config, params, clips, budget_chunks: int) -> dict:
    """ADE/FDE at 4 s per mode, per predicted chunk index, over the held-out clips."""
    import dataclasses
    import jax
    import jax.numpy as jnp
    from wam_jax.experiment import Experiment
    from wam_jax.metrics import trajectory
    from wam_jax.rollout import kv_memory
    from wam_jax.rollout.engine import RolloutEngine
    exp = Experiment(config)
    lv, k = exp.wam.video_tokens(exp.wan), exp.wam.waypoints_per_chunk
    n = clips[0][1].shape[1]
    results = {}
    for mode in MODES:
        mem = dataclasses.replace(exp.memory, mode=mode, max_chunks=n, video_budget=budget_chunks * lv,
                                  action_budget=budget_chunks * k)
        engine = RolloutEngine(exp.wan, exp.wam, exp.sampler, mem)
        ade, fde, report = [], [], None
        for i, (lat, actions, waypoints, intents) in enumerate(clips):
            if exp.guidance is not None and intents is not None:
                g = [jnp.asarray(exp.guidance.embed(None, {"intent": [t]})[:, None]) for t in intents]
                gfn = lambda c, g=g: g[c]
            else:
                gfn = lambda c: None
            planned, report = observed_rollout(engine, params, lat, actions, gfn, jax.random.key(1000 + i))
            pred = exp.action_norm.denormalize(planned)                        # [N − 1, K, 3]
            gt = waypoints[1:]
            ade.append(trajectory.ade(pred[:, None], gt)[:, 0, 0])            # [N − 1]
            fde.append(trajectory.fde(pred[:, None], gt)[:, 0, 0])
        ade, fde = np.stack(ade), np.stack(fde)                              # [clips, N − 1]
        bounded = slice(budget_chunks, None)      # chunk c sees c past chunks: > budget from c = budget + 1
        results[mode] = {"ade_per_chunk": ade.mean(0).tolist(), "fde_per_chunk": fde.mean(0).tolist(),
                         "ade": float(ade.mean()), "fde": float(fde.mean()),
                         "ade_bounded": float(ade[:, bounded].mean()), "fde_bounded": float(fde[:, bounded].mean()),
                         "tokens": report["tokens"], "kv_bytes": report["allocated_bytes"]}
        _log(f"[eval] {mode:<9} ADE {results[mode]['ade']:.3f} FDE {results[mode]['fde']:.3f} "
             f"(bounded chunks: {results[mode]['ade_bounded']:.3f} / {results[mode]['fde_bounded']:.3f}), "
             f"{report['tokens']} tokens/layer")
    return results


def format_results(per_seed: dict[int, dict], budget_chunks: int, chunks: int) -> str:
    seeds = sorted(per_seed)
    lines = [f"| memory | ADE@4s m | FDE@4s m | ADE@4s bounded | FDE@4s bounded | KV tokens/layer | KV bytes |",
             "|---|---|---|---|---|---|---|"]
    stat = lambda mode, key: np.array([per_seed[s][mode][key] for s in seeds])
    for mode in MODES:
        cells = []
        for key in ("ade", "fde", "ade_bounded", "fde_bounded"):
            v = stat(mode, key)
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}")
        r = per_seed[seeds[0]][mode]
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {r['tokens']} | {r['kv_bytes']:,} |")
    lines.append("")
    lines.append(f"mean ± sample std over {len(seeds)} seed(s) {seeds}; {chunks}-chunk ({4 * chunks} s) held-out "
                 f"clips, chunks 1 … {chunks - 1} predicted; 'bounded' = chunks {budget_chunks + 1} … {chunks - 1}, "
                 f"whose history exceeds the {budget_chunks}-chunk budget of fifo / selective")
    for s in seeds:
        lines.append(f"seed {s}: " + "; ".join(
            f"{m} ADE/chunk " + ", ".join(f"{x:.2f}" for x in per_seed[s][m]["ade_per_chunk"]) for m in MODES))
    return "\n".join(lines)


def run(out: str, seeds, steps: int, clips: int, chunks: int, heldout: int, budget_chunks: int, overrides=()):
    os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
    from wam_jax import demo
    from wam_jax.rollout.engine import load_trained_params
    if not 2 <= budget_chunks < chunks - 1:
        raise SystemExit(f"--budget-chunks {budget_chunks} must be in [2, chunks − 2 = {chunks - 2}]: with 1 the "
                         "pools hold only the new chunk (fifo = selective), and some chunks' history must exceed it")
    os.makedirs(out, exist_ok=True)
    results_path = os.path.join(out, "results.json")
    per_seed = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            per_seed = {int(s): r for s, r in json.load(f)["per_seed"].items()}
    for seed in seeds:
        if seed in per_seed:
            _log(f"[seed {seed}] done before, reusing its results")
            continue
        config = seed_config(out, seed, steps, clips, chunks, overrides, heldout)
        _, heldout_dir = demo.prepare_data(config, os.path.join(out, "data"))
        workdir = os.path.join(out, f"seed_{seed}")
        train_seed(config, workdir)
        params, step = load_trained_params(workdir, config)
        per_seed[seed] = evaluate_seed(config, params, heldout_clips(config, heldout_dir), budget_chunks)
        per_seed[seed]["checkpoint_step"] = step
        with open(results_path, "w") as f:
            json.dump({"args": {"seeds": list(seeds), "steps": steps, "clips": clips, "chunks": chunks,
                                "heldout": heldout, "budget_chunks": budget_chunks, "overrides": list(overrides)},
                       "per_seed": per_seed}, f, indent=2)
    table = format_results(per_seed, budget_chunks, chunks)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/studies/memory_table")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--clips", type=int, default=40, help="training clips")
    parser.add_argument("--chunks", type=int, default=6, help="chunks per clip (4 s each), train and held out")
    parser.add_argument("--heldout", type=int, default=8, help="held-out clips")
    parser.add_argument("--budget-chunks", type=int, default=2, help="fifo / selective budget, in chunks")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")


def main(args) -> str:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    return run(args.out, seeds, args.steps, args.clips, args.chunks, args.heldout, args.budget_chunks, args.set)
