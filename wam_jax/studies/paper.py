"""The paper's studies at demo scale: each a set of variants of experiments/drivewam_highway.py, trained with
≥ 3 seeds and scored on the same held-out clips (open-loop plan ADE/FDE at 4 s, the paper's Table 3/4 metric,
beside constant velocity; imagination latent MSE beside copy-last-frame; optionally a closed loop).

  video_supervision  the video loss on vs off (paper Table 4: ADE@4s 0.83 vs 1.23). Off: flow.video_weight=0 and
                     flow.layout=history_only, so the actions come from the history alone (with no video
                     objective there is no imagined chunk to decode them from).
  pretraining        the DiT first pretrained on action-free video vs from scratch (paper: 0.83 vs 1.10). The
                     pretraining run sees a separate pool of clips with actions and ego state zeroed and the
                     video loss only (flow.action_free); its Wan part initialises the DriveWAM (init=wan), as an
                     imported Wan2.2 does at paper scale. It gets the scratch run's steps on top of its own.
  guidance           scene-evolving intents vs one fixed prompt (guidance.source=fixed; paper Table 3).
  data_scaling       10 / 20 / 40 training clips (paper Table 3: 4k / 20k / 100k clips).

The base variant (video supervision, scene guidance, scratch, 40 clips) is shared by all four studies and
trained once per seed. All variants use one PCA latent basis (fit on the 40-clip set) so that the latent
errors compare. Runs are kept under OUT/runs/<variant>/seed<k>; a finished run is reused, so an interrupted
study resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from wam_jax.tools import tables

EXPERIMENT = "experiments/drivewam_highway.py"
PRETRAIN_SEED = 200_000          # action-free pretraining clips: apart from training (0…) and held-out (100000…)
CLIP_SIZES = (10, 20, 40)


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    overrides: tuple[str, ...] = ()
    clips: int | None = None         # training clips; None: the largest size (the base)
    pretrain: bool = False


FIXED = {
    "base": Variant("DriveWAM (base)"),
    "no_video_supervision": Variant("no video supervision", ("flow.video_weight=0.0", "flow.layout=history_only")),
    "video_pretrained": Variant("video-pretrained", pretrain=True),
    "fixed_prompt": Variant("fixed prompt", ("guidance.source=fixed",)),
}
# study → [(row label, variant key, the paper's ADE@4s m for the row)]; data scaling's rows come from the sizes.
STUDIES = {
    "video_supervision": [("video supervision on", "base", 0.83),
                          ("video supervision off", "no_video_supervision", 1.23)],
    "pretraining": [("from scratch", "base", 1.10), ("video-pretrained", "video_pretrained", 0.83)],
    "guidance": [("scene-evolving guidance", "base", 0.83), ("fixed prompt", "fixed_prompt", 0.92)],
    "data_scaling": [],
}
PAPER_SCALING = (1.01, 0.94, 0.83)   # 4k / 20k / 100k clips, scene-evolving guidance
PAPER_NOTE = ("paper: ADE@4s on PhysicalAI-AV with 100k clips (Table 4), data scaling 4k/20k/100k clips with "
              "scene-evolving guidance (Table 3)")


def study_rows(study: str, sizes=CLIP_SIZES) -> list[tuple[str, str, float | None]]:
    if study == "data_scaling":
        papers = PAPER_SCALING[-len(sizes):] if len(sizes) <= len(PAPER_SCALING) else [None] * len(sizes)
        return [(f"{n} clips", "base" if n == max(sizes) else f"clips_{n}", p) for n, p in zip(sorted(sizes), papers)]
    return STUDIES[study]


def variant(key: str) -> Variant:
    if key in FIXED:
        return FIXED[key]
    if key.startswith("clips_") and key[6:].isdigit():
        return Variant(f"{key[6:]} clips", clips=int(key[6:]))
    raise KeyError(f"unknown study variant {key!r}")


def _log(msg: str) -> None:
    print(msg, flush=True)


def study_variants(study: str, sizes=CLIP_SIZES) -> list[str]:
    if study == "all":
        return list(dict.fromkeys(v for name in STUDIES for _, v, _ in study_rows(name, sizes)))
    if study not in STUDIES:
        raise SystemExit(f"unknown study {study!r}; known: {sorted(STUDIES)} or 'all'")
    return [v for _, v, _ in study_rows(study, sizes)]


class StudyContext:
    """Datasets, the shared PCA basis and the run directory of one study output folder."""

    def __init__(self, out: str, steps: int, extra_overrides=(), episodes: int = 0, heldout_clips: int = 12,
                 sizes=CLIP_SIZES):
        self.out, self.steps, self.extra, self.episodes = os.path.abspath(out), steps, tuple(extra_overrides), episodes
        self.heldout_clips, self.sizes = heldout_clips, tuple(sorted(sizes))
        if not self.sizes or self.sizes[0] < 1 or len(set(self.sizes)) != len(self.sizes):
            raise SystemExit(f"clip sizes {sizes}: give distinct positive counts")
        self.datasets: dict[str, str] = {}

    def clips(self, v: Variant) -> int:
        return self.sizes[-1] if v.clips is None else v.clips

    def config(self, v: Variant, seed: int, data_dir: str = "", more=()):
        from wam_jax.config import load_config
        arg = f"{EXPERIMENT}:steps={self.steps},clips={self.clips(v)},seed={seed}"
        overrides = [*v.overrides, *more, *self.extra]
        config = load_config(arg, overrides)
        with config.unlocked():
            if data_dir:
                config.data.data_dir = data_dir
            config.latent.pca_path = self.pca_path
        return config, arg, overrides

    def dataset(self, name: str, clips: int, seed: int) -> str:
        from wam_jax import demo
        from wam_jax.config import load_config
        if name not in self.datasets:
            config = load_config(f"{EXPERIMENT}:clips={clips}", list(self.extra))
            self.datasets[name] = demo.build_dataset(config, name, clips, seed, os.path.join(self.out, "data", name))
        return self.datasets[name]

    def prepare(self, variants):
        from data_pipelines import prepare
        from wam_jax.config import load_config
        config = load_config(EXPERIMENT, list(self.extra))
        for clips in sorted({self.clips(variant(v)) for v in variants} | {self.sizes[-1]}):
            self.dataset(f"train_{clips}", clips, config.dataset.seed)
        if any(variant(v).pretrain for v in variants):
            self.dataset("pretrain", self.sizes[-1], PRETRAIN_SEED)
        self.heldout = self.dataset("heldout", self.heldout_clips, config.dataset.heldout_seed)
        with config.unlocked():
            config.data.data_dir = self.datasets[f"train_{self.sizes[-1]}"]
        self.pca_path = prepare.pca_for(config, config.data.data_dir, log=_log)

    def run_dir(self, variant: str, seed: int) -> str:
        return os.path.join(self.out, "runs", variant, f"seed{seed}")


def _train(config, workdir: str) -> float:
    from wam_jax.training.trainer import Trainer
    start = time.perf_counter()
    Trainer(config, workdir).run()
    return time.perf_counter() - start


def run_variant(ctx: StudyContext, key: str, seed: int) -> dict:
    """Trains (or reuses) one variant at one seed and scores it; the record is also
    OUT/runs/<key>/seed<k>/result.json."""
    from wam_jax.interop.wan_import import save_wan_part
    from wam_jax.rollout.engine import load_trained_params
    target = ctx.run_dir(key, seed)
    result_path = os.path.join(target, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    v = variant(key)
    os.makedirs(target, exist_ok=True)
    wall = {}
    more = []
    if v.pretrain:
        pre_config, _, _ = ctx.config(v, seed, ctx.datasets["pretrain"], ["flow.action_free=True"])
        _log(f"[study] {key} seed {seed}: pretraining on action-free video ({ctx.steps} steps)")
        wall["pretrain_s"] = _train(pre_config, os.path.join(target, "pretrain"))
        wan_dir = os.path.join(target, "pretrained_wan")
        if not os.path.exists(os.path.join(wan_dir, "meta.json")):
            from wam_jax.experiment import Experiment
            params, _ = load_trained_params(os.path.join(target, "pretrain"), pre_config)
            save_wan_part(params, Experiment(pre_config).wan, wan_dir, os.path.join(target, "pretrain"))
        more = ["init=wan", f"init_checkpoint={wan_dir}"]
    config, arg, overrides = ctx.config(v, seed, ctx.datasets[f"train_{ctx.clips(v)}"], more)
    _log(f"[study] {key} seed {seed}: training {ctx.steps} steps on {ctx.clips(v)} clips")
    wall["train_s"] = _train(config, os.path.join(target, "run"))
    record = {"variant": key, "label": v.label, "seed": seed, "clips": ctx.clips(v), "steps": ctx.steps,
              "config": arg, "overrides": overrides, **_scored(ctx, config, os.path.join(target, "run"), wall)}
    tables.write_json(result_path, record)
    _log(f"[study] {key} seed {seed}: ADE@4s {record['plan_ade_m']:.3f} m ({record['wall_s']['total_s']:.0f} s)")
    return record


def _scored(ctx: StudyContext, config, workdir: str, wall: dict) -> dict:
    """`score` of a run, the held-out clips and numerics it was scored with, and its wall times (`wall`, the
    scoring's own as eval_s, and their total)."""
    from wam_jax.demo import numerics_environment
    start = time.perf_counter()
    fields = score(config, workdir, ctx)
    wall = {k: v for k, v in wall.items() if k != "total_s"}
    wall["eval_s"] = time.perf_counter() - start
    return {**fields, "heldout": ctx.heldout, "numerics": numerics_environment(),
            "wall_s": dict(wall, total_s=sum(wall.values()))}


def score(config, workdir: str, ctx: StudyContext) -> dict:
    """Held-out open-loop plan error and imagination error (evaluation.imagination), and with ctx.episodes > 0
    the closed-loop aggregates of the learned planner."""
    from data_pipelines import pipeline
    from wam_jax.evaluation import imagination
    from wam_jax.rollout.engine import load_trained_params
    params, step = load_trained_params(workdir, config)
    result = imagination.evaluate(config, params, list(pipeline.iter_clips(ctx.heldout)))
    result.pop("example")
    offsets = result["offsets_s"]
    at = {name: offsets.index(min(offsets, key=lambda o: abs(o - name))) for name in (1.0, 4.0)}
    out = {"checkpoint_step": step, "pairs": result["pairs"],
           "plan_ade_m": result["plan_ade_m"]["model"], "plan_fde_m": result["plan_ade_m"]["model_fde"],
           "cv_ade_m": result["plan_ade_m"].get("constant_velocity"),
           "cv_fde_m": result["plan_ade_m"].get("constant_velocity_fde"),
           **{f"{name}_mse_{o:g}s": result["latent_mse"][name][i] for name in ("model", "model_mean", "copy_last")
              for o, i in at.items()}}
    if ctx.episodes > 0:
        from wam_jax import planners as planner_table
        from wam_jax.demo import EVAL_SEED
        from wam_jax.evaluation import closed_loop as cl
        from wam_jax.experiment import Experiment
        exp = Experiment(config)
        planner = planner_table.build_planner(planner_table.LEARNED_PLANNER, exp.sim, workdir, config)
        cl_cfg = dataclasses.replace(exp.closed_loop, video=False, plots=False)
        results = cl.evaluate({"drivewam": planner}, ctx.episodes, EVAL_SEED, exp.sim, cl_cfg,
                              os.path.join(workdir, "..", "eval"), log=_log)
        out["closed_loop"] = cl.aggregate(results["drivewam"])
    return out


def claim(target: str) -> bool:
    """Whether this process may run the variant at `target`: nobody has claimed it, or its claimer has exited
    (so parallel workers share one queue and a killed worker's run is taken up again)."""
    os.makedirs(target, exist_ok=True)
    path = os.path.join(target, "CLAIM")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            with open(path) as f:
                pid = int(f.read().strip() or 0)
            if pid == os.getpid():
                return True
            os.kill(pid, 0)
            return False                 # its claimer is alive
        except (ValueError, ProcessLookupError):
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def run(study: str, out: str, seeds, steps: int, episodes: int = 0, extra_overrides=(), heldout_clips: int = 12,
        sizes=CLIP_SIZES, workers: int = 1) -> list[dict]:
    """Every variant of `study` at every seed; with workers > 1, that many processes (one CPU each) share the
    runs. Returns the records in (seed, variant) order."""
    ctx = StudyContext(out, steps, extra_overrides, episodes, heldout_clips, sizes)
    variants = study_variants(study, ctx.sizes)
    ctx.prepare(variants)
    start = time.perf_counter()
    items = [(key, seed) for seed in seeds for key in variants]
    if workers > 1:
        _spawn_workers(study, out, seeds, steps, episodes, extra_overrides, heldout_clips, ctx.sizes, workers)
    else:
        for key, seed in items:
            if os.path.exists(os.path.join(ctx.run_dir(key, seed), "result.json")) or claim(ctx.run_dir(key, seed)):
                run_variant(ctx, key, seed)
    result = lambda key, seed: os.path.join(ctx.run_dir(key, seed), "result.json")
    missing = [(key, seed) for key, seed in items if not os.path.exists(result(key, seed))]
    if missing and workers > 1:
        raise RuntimeError(f"the study workers left runs unfinished: {missing}")
    if missing:          # claimed by another live process: it will write them
        _log(f"[study] left to the processes that claimed them: {missing}")
    records = []
    for key, seed in items:
        if (key, seed) not in missing:
            with open(result(key, seed)) as f:
                records.append(json.load(f))
    _log(f"[study] {study}: {len(records)} runs in {time.perf_counter() - start:.0f} s")
    return records


def _spawn_workers(study, out, seeds, steps, episodes, extra_overrides, heldout_clips, sizes, workers):
    import subprocess
    import sys
    cpus = sorted(os.sched_getaffinity(0))
    argv = [sys.executable, "-m", "wam_jax.studies", "run", "--study", study, "--out", out,
            "--seeds", ",".join(map(str, seeds)), "--steps", str(steps), "--episodes", str(episodes),
            "--clips", ",".join(map(str, sizes)), "--heldout-clips", str(heldout_clips)]
    argv += [x for o in extra_overrides for x in ("--set", o)]
    procs = [subprocess.Popen(argv + ["--cpu", str(cpus[i % len(cpus)])]) for i in range(workers)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"study workers exited with {codes}")


def rescore(out: str, episodes: int = 0) -> list[dict]:
    """Scores every finished run under `out` again with the current evaluation code (each run's saved config,
    the held-out clips it was scored on); training wall times are kept, `eval_s` is the new scoring's."""
    from wam_jax import checkpoint
    from wam_jax.config import load_saved_config
    ctx = StudyContext(out, 0, (), episodes)
    records = []
    for record in load_records(out):
        ctx.heldout = record.get("heldout") or os.path.join(ctx.out, "data", "heldout")
        if not os.path.isdir(ctx.heldout):
            raise FileNotFoundError(f"the held-out clips of {record['variant']} seed {record['seed']} are gone: "
                                    f"{ctx.heldout}")
        target = ctx.run_dir(record["variant"], record["seed"])
        workdir = os.path.join(target, "run")
        record.update(_scored(ctx, load_saved_config(checkpoint.run_config_path(workdir)), workdir,
                              record["wall_s"]))
        tables.write_json(os.path.join(target, "result.json"), record)
        _log(f"[study] rescored {record['variant']} seed {record['seed']}: ADE@4s {record['plan_ade_m']:.3f} m")
        records.append(record)
    return records


def load_records(out: str) -> list[dict]:
    records = []
    runs = os.path.join(out, "runs")
    for root, _, files in sorted(os.walk(runs)):
        if "result.json" in files:
            with open(os.path.join(root, "result.json")) as f:
                records.append(json.load(f))
    return records


def mean_spread(values) -> str:
    """'mean ± sd' (sample sd over seeds; one value has no spread)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return "-"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v.mean():.3f}"


COLUMNS = (("ADE@4s m", "plan_ade_m"), ("FDE@4s m", "plan_fde_m"), ("MSE@1s mean", "model_mean_mse_1s"),
           ("MSE@4s mean", "model_mean_mse_4s"))


def collect(out: str) -> str:
    """One table per study over the finished runs under `out`: mean ± sd over seeds, the seeds, the wall time
    per run, and the paper's figure for the row."""
    records = load_records(out)
    if not records:
        return f"no study results under {out!r}: run `python -m wam_jax.studies run --study NAME` first"
    by_variant: dict[str, list[dict]] = {}
    for r in records:
        by_variant.setdefault(r["variant"], []).append(r)
    header = ["study", "variant", *(c[0] for c in COLUMNS), "seeds", "s/run", "paper ADE@4s"]
    rows = []
    sizes = sorted({r["clips"] for r in records if r["variant"] == "base" or r["variant"].startswith("clips_")})
    for study in STUDIES:
        for label, key, paper in study_rows(study, sizes or CLIP_SIZES):
            runs = sorted(by_variant.get(key, []), key=lambda r: r["seed"])
            if not runs:
                continue
            rows.append([study, label, *(mean_spread([r[k] for r in runs]) for _, k in COLUMNS),
                         ",".join(str(r["seed"]) for r in runs),
                         f"{np.mean([r['wall_s']['total_s'] for r in runs]):.0f}",
                         "-" if paper is None else f"{paper:.2f}"])
    base = by_variant.get("base", [])
    lines = [tables.format_table(header, rows, left_columns=2)]
    if base:
        lines.append(f"baselines on the same held-out pairs: constant velocity ADE@4s {base[0]['cv_ade_m']:.3f} m, "
                     f"FDE@4s {base[0]['cv_fde_m']:.3f} m; copy-last-frame MSE@1s {base[0]['copy_last_mse_1s']:.3f}, "
                     f"@4s {base[0]['copy_last_mse_4s']:.3f} ({base[0]['pairs']} chunk pairs)")
    lines.append(PAPER_NOTE)
    if any("closed_loop" in r for r in records):
        cl_rows = [[r["variant"], str(r["seed"]), *(f"{r['closed_loop'][k]:.3f}" for k in
                                                    ("collision_rate", "off_road_rate", "pdms"))]
                   for r in records if "closed_loop" in r]
        lines.append(tables.format_table(["variant", "seed", "collision", "off-road", "PDMS"], cl_rows,
                                         left_columns=1))
    return "\n".join(lines)
