"""Config errors a user can make: typed and enumerated experiment arguments, `--set` with the full dotted key,
bad train values, a folder as --config, and the shared CLI (saved config.json fallback, one-line errors)."""

import argparse
import json
import os

import pytest

from wam_jax import cli as wam_cli
from wam_jax.config import ConfigError, load_config, one_of, parse_arg
from wam_jax.training.trainer import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "drivewam_tiny.py")
HIGHWAY = os.path.join(REPO, "experiments", "drivewam_highway.py")


@pytest.mark.parametrize("arg, match", [
    ("guidance=maybe", r"guidance='maybe' unknown; choose one of \['off', 'on'\]"),
    ("guidance=of", r"guidance='of' unknown"),
    ("steps=abc", r"config argument steps='abc': expected an integer"),
    ("steps=1.5", r"expected an integer"),
    ("memory=selectiv", r"memory='selectiv' unknown; choose one of \['full', 'selective'\]"),
    ("stepz=3", r"unknown config argument 'stepz' \(did you mean steps\?\)"),
])
def test_experiment_arguments_are_typed_and_enumerated(arg, match):
    with pytest.raises(ConfigError, match=match):
        load_config(f"{TINY}:{arg}")


def test_enumerated_default_and_valid_values():
    assert parse_arg(None, guidance=one_of("off", "on")).guidance == "off"
    assert parse_arg("guidance=on", guidance=one_of("off", "on")).guidance == "on"
    assert load_config(f"{TINY}:guidance=on,steps=7").train.steps == 7
    assert load_config(f"{HIGHWAY}:guidance=off").guidance.enabled is False
    assert parse_arg("lr=3", lr=0.1).lr == 3.0 and isinstance(parse_arg("lr=3", lr=0.1).lr, float)


@pytest.mark.parametrize("override, match", [
    ("train.steps=abc", r"--set train\.steps='abc': expected an integer"),
    ("train.lr=fast", r"--set train\.lr='fast': expected a number"),
    ("train.stepz=3", r"unknown config key 'train\.stepz': train has no field 'stepz' \(did you mean steps\?\)"),
    ("train.async_checkpoints=maybe", r"--set train\.async_checkpoints='maybe': expected a boolean"),
    ("steps", r"must look like dotted\.key=value"),
])
def test_overrides_name_the_full_dotted_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TINY, [override])


@pytest.mark.parametrize("field, value", [("steps", -3), ("batch_size", 0), ("log_every", 0),
                                          ("checkpoint_every", 0)])
def test_train_values_are_checked(field, value):
    config = load_config(TINY, [f"train.{field}={value}"])
    with pytest.raises(ConfigError, match=rf"config\.train\.{field}={value} must be an integer >= 1"):
        TrainConfig.from_config(config.train)


def test_config_folder_or_other_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(os.path.join(REPO, "experiments"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a Python experiment file"):
        load_config(str(tmp_path / "notes.txt"))


def _args(argv, **kw):
    parser = argparse.ArgumentParser()
    wam_cli.add_config_args(parser, **kw)
    return parser.parse_args(argv)


def test_cli_falls_back_to_the_runs_saved_config(tmp_path, capsys):
    config = load_config(TINY, ["train.steps=9"])
    run = tmp_path / "run"
    (run / "checkpoints" / "4" / "state").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    for where in (run, run / "checkpoints", run / "checkpoints" / "4"):
        loaded = wam_cli.config_from_args(_args(["--set", "train.lr=0.5"], checkpoint_arg=True), run_dir=str(where))
        assert loaded.train.steps == 9 and loaded.train.lr == 0.5
    assert "the run's saved config" in capsys.readouterr().err
    given = wam_cli.config_from_args(_args(["--config", TINY]), run_dir=str(run))
    assert given.train.steps == 300
    with pytest.raises(ConfigError, match="config.json does not exist"):
        wam_cli.config_from_args(_args([]), run_dir=str(tmp_path))
    assert wam_cli.config_from_args(_args([]), required=False) is None
    with pytest.raises(ConfigError, match="--set needs --config"):
        wam_cli.config_from_args(_args(["--set", "a=1"]), required=False)


def test_user_errors_are_one_line_rc_2_and_bugs_keep_their_traceback(capsys):
    @wam_cli.user_errors
    def command(argv):
        load_config(TINY, argv)

    assert command(["train.steps=abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set train.steps='abc'") and err.count("\n") == 1

    @wam_cli.user_errors
    def buggy(argv):
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        buggy([])


@pytest.mark.parametrize("module", ["wam_jax.training.trainer", "wam_jax.rollout.engine", "wam_jax.evaluation.cli",
                                    "wam_jax.interop.export", "wam_jax.tools.bench", "wam_jax.demo",
                                    "wam_jax.interop.wan_import", "wam_jax.interop.vae_import",
                                    "wam_jax.interop.drivewam_import"])
def test_every_command_reports_config_mistakes_in_one_line(module, capsys, tmp_path):
    import importlib
    cli = importlib.import_module(module).cli
    argv = {"wam_jax.interop.wan_import": ["--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
            "wam_jax.interop.vae_import": ["--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
            "wam_jax.interop.drivewam_import": ["--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
            "wam_jax.interop.export": ["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
            "wam_jax.rollout.engine": ["--checkpoint", str(tmp_path), "--config", TINY, "--set", "train.steps=abc"],
            "wam_jax.evaluation.cli": ["--config", TINY, "--set", "train.steps=abc"],
            }.get(module, ["--config", TINY, "--set", "train.steps=abc"])
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
