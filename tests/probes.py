"""The issue-19 probe list, rerunnable: each probe runs the real commands on tiny configs and checks what a user
would see (exit status, the one line on stderr, what is left on disk). Prints one row per probe.

    PYTHONPATH=. JAX_PLATFORMS=cpu python -m tests.probes [--only NAME,...] [--keep DIR]

Slow on purpose (each `train` compiles the tiny model): minutes on a 2-core machine. The pytest files
tests/test_checkpoint.py, test_reliability.py, test_config.py and test_data_validation.py check the same
behaviour as fast tests; this script is the end-to-end rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
TINY = os.path.join(REPO, "experiments", "drivewam_tiny.py")

# A tiny experiment on an ArrayRecord dataset read through grain with one worker process.
EXPERIMENT = """
import sys
sys.path.insert(0, {repo!r})
from experiments.drivewam_tiny import get_config as tiny

def get_config(arg=None):
    c = tiny(arg)
    c.wam.latent_frames_per_chunk = 1
    c.chunks = 2
    c.train.batch_size = 2
    c.train.log_every = 1
    c.data = dict(source="tfds", data_dir={data!r}, inputs="latents", num_workers=1, worker_buffer_size=1)
    return c
"""


def tiny_clip_builder():
    from data_pipelines import fixtures

    class TinyClips(fixtures.WamSynthetic):
        """Synthetic clips with one latent frame per chunk and no head frame (the tiny model's layout)."""

        def _generate_clips(self):
            for key, clip in super()._generate_clips():
                clip.latents = clip.latents[1:]
                clip.latent_chunk_start = np.arange(len(clip.latent_chunk_start), dtype=np.int32)
                yield key, clip
    return TinyClips


def write_tiny_experiment(root: str) -> tuple[str, str]:
    """(experiment file, dataset dir) under root."""
    from data_pipelines import builders, fixtures
    data = builders.build(tiny_clip_builder(), fixtures.SyntheticConfig(
        name="probe", num_clips=4, num_chunks=2, n_wp=8, latent_shape=(4, 4, 8)), os.path.join(root, "data"))
    path = os.path.join(root, "exp.py")
    with open(path, "w") as f:
        f.write(EXPERIMENT.format(repo=REPO, data=data))
    return path, data


def run(*argv, timeout=600):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=ENV, cwd=REPO,
                          timeout=timeout)


def train(exp, workdir, *sets, timeout=600):
    args = ["-m", "wam_jax", "train", "--config", exp, "--workdir", workdir]
    for s in sets:
        args += ["--set", s]
    return run(*args, timeout=timeout)


def one_line_error(out) -> bool:
    return out.returncode == 2 and out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error: ")


def flip_bytes(step_dir: str) -> None:
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
    target = max(files, key=os.path.getsize)
    with open(target, "r+b") as f:
        f.seek(os.path.getsize(target) // 2)
        chunk = f.read(16)
        f.seek(os.path.getsize(target) // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


# ----- probes: each returns (ok, what was seen) -----------------------------------------------------------------

def probe_two_trainers(ctx):
    workdir = os.path.join(ctx["root"], "two")
    first = subprocess.Popen([sys.executable, "-m", "wam_jax", "train", "--config", ctx["exp"], "--workdir", workdir,
                              "--set", "train.steps=100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=ENV, cwd=REPO)
    try:
        deadline = time.time() + 300
        while not os.path.exists(os.path.join(workdir, "config.json")) and time.time() < deadline:
            time.sleep(0.5)
        second = train(ctx["exp"], workdir, "train.steps=3", "seed=1")
        ok = one_line_error(second) and f"pid {first.pid}" in second.stderr
        return ok, second.stderr.strip()[:160]
    finally:
        first.kill()
        first.wait()


def probe_sigkill_workers(ctx):
    workdir = os.path.join(ctx["root"], "kill")
    first = subprocess.Popen([sys.executable, "-m", "wam_jax", "train", "--config", ctx["exp"], "--workdir", workdir,
                              "--set", "train.steps=100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=ENV, cwd=REPO)
    workers = []
    deadline = time.time() + 300
    while not workers and time.time() < deadline:
        time.sleep(0.5)
        workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == first.pid]
    time.sleep(2)
    workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == first.pid]
    first.send_signal(signal.SIGKILL)
    first.wait()
    deadline = time.time() + 20
    while any(_ppid(w) is not None for w in workers) and time.time() < deadline:
        time.sleep(0.5)
    alive = [w for w in workers if _ppid(w) is not None]
    resumed = train(ctx["exp"], workdir, "train.steps=1")
    ok = bool(workers) and not alive and resumed.returncode == 0 and "handle is closed" not in resumed.stderr \
        and "taking over the stale lock" in resumed.stderr
    return ok, f"workers {workers}, alive 20 s after SIGKILL: {alive}; resumed rc {resumed.returncode}"


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[1])
    except OSError:
        return None


def _trained(ctx):
    """A finished tiny run with checkpoints at steps 2 and 4 (made once)."""
    workdir = os.path.join(ctx["root"], "trained")
    if not os.path.isdir(workdir):
        out = train(TINY, workdir, "train.steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=3")
        assert out.returncode == 0, out.stderr[-2000:]
    return workdir


def probe_bit_flip(ctx):
    workdir = os.path.join(ctx["root"], "flip")
    shutil.copytree(_trained(ctx), workdir)
    flip_bytes(os.path.join(workdir, "checkpoints", "4"))
    explicit = run("-m", "wam_jax", "export", "--checkpoint", workdir, "--out", os.path.join(workdir, "e"),
                   "--step", "4")
    fallback = run("-m", "wam_jax", "export", "--checkpoint", workdir, "--out", os.path.join(workdir, "f"))
    resumed = train(TINY, workdir, "train.steps=4")
    ok = (one_line_error(explicit) and "corrupt" in explicit.stderr and fallback.returncode == 0
          and "falling back" in fallback.stderr and "resumed from step 2" in resumed.stdout)
    return ok, explicit.stderr.strip()[:160]


def probe_config_json_after_validation(ctx):
    workdir = os.path.join(ctx["root"], "cfg")
    shutil.copytree(_trained(ctx), workdir)
    before = open(os.path.join(workdir, "config.json")).read()
    out = train(TINY, workdir, "train.steps=6", "model.ffn_dim=64")
    same = open(os.path.join(workdir, "config.json")).read() == before
    export = run("-m", "wam_jax", "export", "--checkpoint", workdir, "--out", os.path.join(workdir, "e"))
    return one_line_error(out) and same and export.returncode == 0, out.stderr.strip()[:160]


def probe_nan_record(ctx):
    root = os.path.join(ctx["root"], "nan")
    shutil.copytree(os.path.dirname(os.path.dirname(os.path.dirname(ctx["data"]))), root)
    from tests.test_data_validation import _nan_waypoint, _rewrite_record
    from data_pipelines import pipeline
    ds = pipeline.find_dataset_dir(root)
    files = sorted(os.path.join(ds, f) for f in os.listdir(ds) if ".array_record-" in f)
    _rewrite_record(files[0], 0, _nan_waypoint)
    out = run("-m", "data_pipelines", "inspect", "--data", root, "--validate")
    return out.returncode == 1 and "non-finite" in out.stdout, out.stdout.strip().splitlines()[-1][:160]


def probe_build_other_settings(ctx):
    out_dir = os.path.join(ctx["root"], "build")
    a = run("-m", "data_pipelines", "build", "--source", "synthetic", "--out", out_dir, "--clips", "3")
    b = run("-m", "data_pipelines", "build", "--source", "synthetic", "--out", out_dir, "--clips", "4")
    c = run("-m", "data_pipelines", "build", "--source", "synthetic", "--out", out_dir, "--clips", "4", "--overwrite")
    last = b.stderr.strip().splitlines()[-1] if b.stderr.strip() else ""
    ok = a.returncode == 0 and b.returncode == 2 and "other settings" in last and c.returncode == 0
    return ok, last[:160]


def probe_prepare_then_train(ctx):
    out = run("-m", "data_pipelines", "prepare", "--data", ctx["data"], "--config", ctx["exp"])
    return out.returncode == 0 and "action statistics" in out.stdout, out.stdout.strip().splitlines()[0][:160]


def probe_rollout_other_config(ctx):
    out = run("-m", "wam_jax", "rollout", "--checkpoint", _trained(ctx), "--config", TINY, "--set", "model.ffn_dim=64",
              "--out", os.path.join(ctx["root"], "ro"))
    return one_line_error(out) and "ffn" in out.stderr, out.stderr.strip()[:160]


def probe_rollout_saved_config(ctx):
    out = run("-m", "wam_jax", "rollout", "--checkpoint", _trained(ctx), "--out", os.path.join(ctx["root"], "ro2"))
    return out.returncode == 0 and "the run's saved config" in out.stderr, out.stdout.strip().splitlines()[0][:160]


def probe_inspect_truncated(ctx):
    root = os.path.join(ctx["root"], "trunc")
    shutil.copytree(os.path.dirname(os.path.dirname(os.path.dirname(ctx["data"]))), root)
    from data_pipelines import pipeline
    ds = pipeline.find_dataset_dir(root)
    f = sorted(os.path.join(ds, f) for f in os.listdir(ds) if ".array_record-" in f)[0]
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    out = run("-m", "data_pipelines", "inspect", "--data", root)
    return out.returncode == 1 and "BAD" in out.stdout, out.stdout.strip().splitlines()[-1][:160]


CONFIG_MISTAKES = [(f"{TINY}:guidance=maybe", []), (f"{TINY}:guidance=of", []), (f"{TINY}:steps=abc", []),
                   (TINY, ["train.steps=abc"]), (TINY, ["train.steps=-3"]), (TINY, ["train.batch_size=0"]),
                   (os.path.join(REPO, "experiments"), [])]


def probe_config_mistakes(ctx):
    seen, ok = [], True
    for spec, sets in CONFIG_MISTAKES:
        out = train(spec, os.path.join(ctx["root"], "mistake"), *sets)
        ok &= one_line_error(out)
        seen.append(out.stderr.strip()[:60])
    return ok, " | ".join(seen)[:160]


def probe_steps_below_checkpoint(ctx):
    workdir = os.path.join(ctx["root"], "below")
    shutil.copytree(_trained(ctx), workdir)
    out = train(TINY, workdir, "train.steps=2")
    return out.returncode == 0 and "nothing to train" in out.stdout, out.stdout.strip().splitlines()[-2][:160]


PROBES = {
    "1 two trainers, one workdir": probe_two_trainers,
    "2 bit-flipped checkpoint": probe_bit_flip,
    "3 config.json after validation": probe_config_json_after_validation,
    "4 SIGKILLed trainer's workers": probe_sigkill_workers,
    "5 NaN record": probe_nan_record,
    "6 build with other settings": probe_build_other_settings,
    "7 prepare a built dataset": probe_prepare_then_train,
    "7 rollout uses the saved config": probe_rollout_saved_config,
    "8 rollout, other config": probe_rollout_other_config,
    "9 inspect a truncated dataset": probe_inspect_truncated,
    "10 config mistakes": probe_config_mistakes,
    "11 train.steps below checkpoint": probe_steps_below_checkpoint,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.probes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma list of probe numbers, e.g. 1,4,10")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args(argv)
    root = args.keep or tempfile.mkdtemp(prefix="wam_probes_")
    os.makedirs(root, exist_ok=True)
    exp, data = write_tiny_experiment(root)
    ctx = {"root": root, "exp": exp, "data": data}
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    failed = 0
    print(f"{'probe':<34}{'ok':<6}{'s':>6}  seen")
    for name, fn in PROBES.items():
        if only and name.split()[0] not in only:
            continue
        t0 = time.time()
        try:
            ok, seen = fn(ctx)
        except Exception as e:       # noqa: BLE001 - a probe that crashes is a failed probe, reported as such
            ok, seen = False, f"{type(e).__name__}: {e}"[:160]
        failed += not ok
        print(f"{name:<34}{'yes' if ok else 'NO':<6}{time.time() - t0:>6.0f}  {seen}", flush=True)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
