"""What every command shares: the `--config/--set/--workdir/--checkpoint` arguments, the fallback to a run's saved
`config.json` when `--config` is omitted, and one-line errors for user mistakes.

    parser = argparse.ArgumentParser(...)
    cli.add_config_args(parser, workdir=True)          # or checkpoint=True
    ...
    @cli.user_errors
    def cli(argv): args = parser.parse_args(argv); config = cli.config_from_args(args, run_dir=args.workdir)

A user mistake (a wrong config, argument or override, a missing or corrupt checkpoint, a bad dataset) prints one
line `error: ...` on stderr and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Callable, Sequence

from wam_jax.config import ConfigError, load_config, load_saved_config

USER_ERROR_RC = 2
# Error types of modules imported only when used; looked up at raise time so this module stays light.
_LAZY_USER_ERRORS = (("wam_jax.checkpoint", "CheckpointError"), ("data_pipelines.schema", "RecordError"), ("data_pipelines.pipeline", "PipelineError"),
                     ("data_pipelines.builders", "BuildError"),
                     ("wam_jax.interop.export", "ExportError"), ("wam_jax.interop.safetensors_io", "SafetensorsError"),
                     ("wam_jax.interop.wan_layout", "WeightMismatchError"),
                     ("wam_jax.interop.vae_import", "VAEWeightMismatchError"))


def add_config_args(parser: argparse.ArgumentParser, *, workdir: bool = False, checkpoint_arg: bool = False,
                    config_required: bool = False, config_default: str | None = None,
                    workdir_help: str = "run folder (default runs/<config name>)",
                    checkpoint_help: str = "a training workdir (its newest intact step), a step folder, or a "
                                           "params checkpoint") -> None:
    default_help = (f" (default: {config_default})" if config_default else
                    "" if config_required else " (default: the run's saved config.json)")
    parser.add_argument("--config", default=config_default, required=config_required,
                        help="experiments/<file>.py[:key=value,...]" + default_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable (dotted key, e.g. train.steps=100)")
    if workdir:
        parser.add_argument("--workdir", default=None, help=workdir_help)
    if checkpoint_arg:
        parser.add_argument("--checkpoint", default=None, help=checkpoint_help)


def config_name(spec: str) -> str:
    return os.path.splitext(os.path.basename(spec.split(":")[0]))[0]


def default_workdir(spec: str) -> str:
    return os.path.join("runs", config_name(spec))


def config_from_args(args: argparse.Namespace, run_dir: str | None = None, required: bool = True,
                     log: Callable[[str], None] | None = None):
    """--config (+ --set) when given, else the saved config.json of the run at `run_dir` (a workdir, checkpoints
    folder or step folder). None when neither exists and not `required`."""
    overrides: Sequence[str] = getattr(args, "set", None) or []
    if getattr(args, "config", None):
        return load_config(args.config, overrides)
    if run_dir:
        from wam_jax import checkpoint
        path = checkpoint.run_config_path(run_dir)
        if os.path.exists(path):
            (log or (lambda m: print(m, file=sys.stderr, flush=True)))(f"config: {path} (the run's saved config)")
            return load_saved_config(path, overrides)
        if required:
            raise ConfigError(f"{path} does not exist (`python -m wam_jax train` writes it); pass the config with "
                              "--config experiments/FILE.py[:args]")
    if required:
        raise ConfigError("pass --config experiments/FILE.py[:args] (or a run folder that holds its config.json)")
    if overrides:
        raise ConfigError("--set needs --config (or a run whose saved config.json it overrides)")
    return None


def user_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConfigError]
    for module, name in _LAZY_USER_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, name):
            types.append(getattr(loaded, name))
    return tuple(types)


def one_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split())


def user_errors(fn: Callable[[list[str]], int | None]) -> Callable[[list[str]], int]:
    """Wraps a command's `cli(argv)`: user mistakes become `error: <one line>` on stderr and exit status 2."""
    @functools.wraps(fn)
    def wrapper(argv: list[str]) -> int:
        try:
            return int(fn(argv) or 0)
        except Exception as err:         # noqa: BLE001 - filtered right below
            if not isinstance(err, user_error_types()):
                raise
            print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
            return USER_ERROR_RC
    return wrapper
