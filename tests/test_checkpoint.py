"""The run layout (wam_jax/checkpoint.py): checksummed steps with fallback to the newest intact one, params
without a Trainer, config.json written only once the run has validated, the workdir lock, clear errors."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from wam_jax import checkpoint, sharding
from wam_jax.config import load_config
from wam_jax.models import wam as wam_lib
from wam_jax.training.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "drivewam_tiny.py")
OVERRIDES = ["train.steps=4", "train.checkpoint_every=2", "train.log_every=100", "train.keep_checkpoints=3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run with steps 2 and 4, and its final state (host copies)."""
    workdir = str(tmp_path_factory.mktemp("run"))
    trainer = Trainer(load_config(TINY, OVERRIDES), workdir)
    state = jax.device_get(trainer.run())
    return workdir, state


def _copy(run, tmp_path):
    workdir = str(tmp_path / "copy")
    shutil.copytree(run[0], workdir)
    return workdir


def _abstract(config):
    wan, wam = wam_lib.build_configs(config)
    return sharding.abstract_params(wam_lib.abstract_params(wan, wam), sharding.make_mesh(dict(config.mesh)))


def _flip_bytes(step_dir):
    """Flips bytes in the middle of the largest file of the step's state (array data)."""
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
    target = max(files, key=os.path.getsize)
    with open(target, "r+b") as f:
        f.seek(os.path.getsize(target) // 2)
        chunk = bytearray(f.read(16))
        f.seek(os.path.getsize(target) // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    return target


def _equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_every_step_is_checksummed_and_config_json_is_the_validated_config(run):
    workdir, _ = run
    root = os.path.join(workdir, checkpoint.CHECKPOINTS_DIR)
    assert checkpoint.list_steps(root) == [2, 4]
    for step in (2, 4):
        assert checkpoint.verify_checksums(checkpoint.step_dir(root, step)) is True
    with open(os.path.join(workdir, checkpoint.CONFIG_FILE)) as f:
        assert json.load(f)["train"]["steps"] == 4
    assert not os.path.exists(os.path.join(workdir, checkpoint.LOCK_FILE)) or \
        open(os.path.join(workdir, checkpoint.LOCK_FILE)).read() == ""      # released at the end


def test_load_params_needs_no_trainer_and_matches_the_run(run):
    workdir, state = run
    config = load_config(TINY, OVERRIDES)
    params, step = checkpoint.load_params(workdir, _abstract(config), "ema_params")
    assert step == 4 and _equal(params, state.ema_params)
    raw, step2 = checkpoint.load_params(os.path.join(workdir, "checkpoints", "2"), _abstract(config), "params")
    assert step2 == 2 and not _equal(raw, state.params)


def test_rollout_eval_and_export_do_not_import_the_trainer():
    import subprocess
    import sys
    code = ("import sys; import wam_jax.rollout.engine, wam_jax.planners.drivewam, wam_jax.evaluation.cli, "
            "wam_jax.interop.export; bad = [m for m in sys.modules if m.startswith('wam_jax.training')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_bit_flipped_step_is_detected_and_the_previous_step_used(run, tmp_path, capsys):
    workdir = _copy(run, tmp_path)
    damaged = _flip_bytes(os.path.join(workdir, "checkpoints", "4"))
    config = load_config(TINY, OVERRIDES)
    with pytest.raises(checkpoint.CheckpointError, match=r"corrupt \(changed state/"):
        checkpoint.verify_checksums(os.path.join(workdir, "checkpoints", "4"))
    params, step = checkpoint.load_params(workdir, _abstract(config), "params")
    assert step == 2
    err = capsys.readouterr().err
    assert "checkpoints/4 is corrupt" in err and "falling back to the previous step" in err, err
    assert os.path.relpath(damaged, os.path.join(workdir, "checkpoints", "4")) in err
    # Asked for explicitly, the damaged step is an error, not a silent fallback.
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load_params(workdir, _abstract(config), "params", step=4)
    # The trainer resumes from step 2 and trains on to 4 again.
    trainer = Trainer(config, workdir)
    assert int(trainer.restore_or_init().step) == 2


def test_export_refuses_a_corrupt_step_and_falls_back_without_step(run, tmp_path, capsys):
    from wam_jax.interop import export
    workdir = _copy(run, tmp_path)
    _flip_bytes(os.path.join(workdir, "checkpoints", "4"))
    assert export.cli(["--checkpoint", workdir, "--out", str(tmp_path / "e1"), "--step", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corrupt" in err, err
    assert not os.path.exists(tmp_path / "e1")
    assert export.resolve_checkpoint(workdir).step == 2


def test_truncated_file_and_broken_data_json_fall_back_with_one_message(run, tmp_path, capsys):
    workdir = _copy(run, tmp_path)
    step4 = os.path.join(workdir, "checkpoints", "4")
    data_files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step4, "data")) for f in fs]
    with open(data_files[0], "w") as f:
        f.write("{not json")
    trainer = Trainer(load_config(TINY, OVERRIDES), workdir)
    assert int(trainer.restore_or_init().step) == 2
    assert "checkpoints/4 is corrupt" in capsys.readouterr().err
    # Both steps damaged (one truncated): a one-line error naming both, no TensorStore traceback.
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(workdir, "checkpoints", "2", "state")) for f in fs]
    with open(max(files, key=os.path.getsize), "r+b") as f:
        f.truncate(10)
    with pytest.raises(checkpoint.CheckpointError, match=r"no intact checkpoint .*step|no intact checkpoint"):
        trainer.restore_or_init()


def test_unverified_step_without_checksums_is_used_and_said(run, tmp_path, capsys):
    workdir = _copy(run, tmp_path)
    os.remove(os.path.join(workdir, "checkpoints", "4", checkpoint.CHECKSUM_FILE))
    _, step = checkpoint.load_params(workdir, _abstract(load_config(TINY, OVERRIDES)))
    assert step == 4 and "no checksums" in capsys.readouterr().err


def test_other_config_names_mismatched_parameters_and_keeps_config_json(run, tmp_path):
    workdir = _copy(run, tmp_path)
    before = open(os.path.join(workdir, "config.json")).read()
    wrong = load_config(TINY, OVERRIDES + ["model.ffn_dim=64"])
    with pytest.raises(checkpoint.CheckpointError, match=r"do not fit the model config.*ffn"):
        checkpoint.load_params(workdir, _abstract(wrong))
    with pytest.raises(checkpoint.CheckpointError, match=r"do not fit the model config.*ffn"):
        Trainer(wrong, workdir).run()
    assert open(os.path.join(workdir, "config.json")).read() == before


def test_steps_below_the_checkpoint_say_so(run, tmp_path, capsys):
    workdir = _copy(run, tmp_path)
    config = load_config(TINY, ["train.steps=2", "train.checkpoint_every=2", "train.log_every=100",
                                "train.keep_checkpoints=3"])
    state = Trainer(config, workdir).run()
    assert int(state.step) == 4
    assert "nothing to train: the checkpoint is at step 4 and train.steps=2" in capsys.readouterr().out


def test_lock_refuses_a_second_writer_and_takes_over_a_stale_one(tmp_path, capsys):
    lock = checkpoint.WorkdirLock(str(tmp_path)).acquire()
    with pytest.raises(checkpoint.CheckpointError, match=rf"in use by another training run \(pid {os.getpid()} on host"):
        checkpoint.WorkdirLock(str(tmp_path)).acquire()
    lock.release()
    # A LOCK file left by a dead process (no flock held): taken over, with a message.
    with open(tmp_path / checkpoint.LOCK_FILE, "w") as f:
        json.dump({"pid": 999999, "host": "elsewhere"}, f)
    with checkpoint.WorkdirLock(str(tmp_path)):
        pass
    assert "taking over the stale lock" in capsys.readouterr().err


def test_resolve_errors_are_clear(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.resolve(str(tmp_path / "nope"))
    with pytest.raises(checkpoint.CheckpointError, match="no finished training steps"):
        checkpoint.resolve(str(tmp_path))


def test_a_step_removed_while_reading_moves_on_to_the_newest_remaining(tmp_path, capsys):
    """A rollout racing a training run's cleanup of old steps."""
    root = tmp_path / "checkpoints"
    for s in (2, 4):
        (root / str(s) / "state").mkdir(parents=True)

    def attempt(step):
        if step == 4:
            shutil.rmtree(root / "4")
            raise FileNotFoundError("directory does not exist")
        return "read"

    assert checkpoint.first_intact(str(root), attempt) == (2, "read")
    assert "removed while reading" in capsys.readouterr().err


def test_a_failed_background_save_is_raised_as_a_checkpoint_error(tmp_path, monkeypatch):
    store = checkpoint.RunCheckpoints(str(tmp_path), async_save=True)

    def full_disk():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.manager, "check_for_errors", full_disk)
    with pytest.raises(checkpoint.CheckpointError, match="writing a checkpoint .* failed: OSError.*No space left"):
        store.check_for_errors()
    monkeypatch.undo()
    store.close()
