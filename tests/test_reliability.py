"""Multi-process reliability (issue 19): two trainers on one workdir, a SIGKILLed trainer whose grain workers
must die with it, the resumed run taking over the stale lock cleanly, and one-line errors from `train`.

Each trainer is a subprocess on the tiny config reading a small ArrayRecord dataset through grain with one
worker process; every wait has a timeout."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import probes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    return probes.write_tiny_experiment(str(tmp_path_factory.mktemp("rel")))[0]


def _train(experiment, workdir, *extra):
    return [sys.executable, "-m", "wam_jax", "train", "--config", experiment, "--workdir", str(workdir), *extra]


def _children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_second_trainer_refused_killed_trainer_takes_its_workers_and_resume_is_clean(experiment, tmp_path):
    workdir = tmp_path / "run"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(_train(experiment, workdir, "--set", "train.steps=100000",
                                    "--set", "train.checkpoint_every=2"),
                             stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=REPO)
    try:
        # The run has validated (config.json) and pulled its first batch: the grain worker process runs.
        _wait_for(lambda: (workdir / "config.json").exists() and _children(first.pid), 300,
                  "the first trainer's grain worker")
        workers = _children(first.pid)       # killed at once: a worker may still be importing (no watcher yet)

        second = subprocess.run(_train(experiment, workdir, "--set", "train.steps=3", "--set", "seed=1"),
                                capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"in use by another training run (pid {first.pid} on host" in second.stderr
        assert second.stderr.strip().count("\n") == 0, second.stderr     # one line, no traceback
        with open(workdir / "config.json") as f:
            assert json.load(f)["seed"] == 0           # the second run did not replace the first's config

        first.kill()                                   # SIGKILL: no cleanup runs in the trainer
        first.wait(timeout=30)
        _wait_for(lambda: not any(_alive(w) for w in workers), 20, f"worker processes {workers} to exit")
    finally:
        if first.poll() is None:
            first.kill()
        log.close()

    steps = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    end = (steps[-1] if steps else 0) + 1
    resumed = subprocess.run(_train(experiment, workdir, "--set", f"train.steps={end}"),
                             capture_output=True, text=True, env=ENV, cwd=REPO, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"taking over the stale lock of {workdir} (pid {first.pid}" in resumed.stderr
    assert ("resumed from step" in resumed.stdout) == bool(steps)
    assert "handle is closed" not in resumed.stderr and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]


def test_train_mistakes_are_one_line(experiment, tmp_path):
    out = subprocess.run(_train(experiment, tmp_path / "w", "--set", "train.steps=abc"), capture_output=True,
                         text=True, env=ENV, cwd=REPO, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == \
        "error: --set train.steps='abc': expected an integer (the default is 300)", out.stderr
    assert not (tmp_path / "w" / "config.json").exists()
