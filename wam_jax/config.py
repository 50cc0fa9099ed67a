"""Experiment configs: one ml-collections file per experiment, variants as `file.py:key=value,...`.

An experiment file defines `get_config(arg: str | None = None) -> ConfigDict` and reads its variant string
with `parse_arg(arg, key=default, ...)`. Command lines add `--set dotted.key=value` overrides. Every level is
strict: an unknown argument, override key or config field fails with its name and the nearest known names.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import os
from typing import Any, Iterable, Mapping, Sequence

import ml_collections


class ConfigError(ValueError):
    """A config, argument or override the user wrote is wrong; the message says which and why."""


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


class Choice:
    """An enumerated experiment argument: `parse_arg(arg, guidance=one_of("off", "on"))`; the first is the default."""

    def __init__(self, *choices: str):
        if not choices:
            raise ValueError("one_of needs at least one choice")
        self.choices = tuple(choices)

    def __repr__(self):
        return f"one_of{self.choices}"


def one_of(*choices: str) -> Choice:
    return Choice(*choices)


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", tuple: "a tuple",
            list: "a list"}.get(type(value), type(value).__name__)


def _parse_value(text: str, default: Any = None, name: str = "value") -> Any:
    """Parses a command-line value against the type of `default` (None: any Python literal, else the raw string).
    A value of the wrong type is a ConfigError naming `name`."""
    if isinstance(default, Choice):
        if text not in default.choices:
            raise ConfigError(f"{name}={text!r} unknown; choose one of {list(default.choices)}")
        return text
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={text!r}: expected a boolean (true/false)")
    if isinstance(default, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if default is None:
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(default)(value)
    if isinstance(default, (dict, ml_collections.ConfigDict)) and isinstance(value, dict):
        return value
    if type(default) not in (int, float, tuple, list, dict, ml_collections.ConfigDict):
        return value      # other defaults (rare): take the literal as written
    raise ConfigError(f"{name}={text!r}: expected {_type_name(default)} (the default is {default!r})")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `key=value,key2=value2` (big_vision style) against known defaults, each value of its default's type;
    a default `one_of(a, b, ...)` is an enumeration (default a).

    A bare word `foo` is shorthand for `foo=True` when `foo` is a boolean default.
    """
    result = {k: (v.choices[0] if isinstance(v, Choice) else v) for k, v in defaults.items()}
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(f"unknown config argument {key!r}{_suggest(key, defaults)}; known: {sorted(defaults)}")
        if not sep:
            if not isinstance(defaults[key], bool):
                raise ConfigError(f"config argument {key!r} needs a value ({key}=...)")
            result[key] = True
        else:
            result[key] = _parse_value(value.strip(), defaults[key], f"config argument {key}")
    return ml_collections.ConfigDict(result)


def _load_module(path: str):
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"--config {path!r} is a folder; pass one experiment file, e.g. experiments/drivewam_tiny.py")
    if not path.endswith(".py"):
        raise ConfigError(f"--config {path!r} is not a Python experiment file (experiments/<name>.py[:args])")
    spec = importlib.util.spec_from_file_location(f"wam_experiment_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config(arg=None)")
    return module


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies `dotted.key=value` overrides; a key that is not in the config is an error."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like dotted.key=value")
        node: Any = config
        parts = key.strip().split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
                known = list(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else []
                where = ".".join(parts[:depth]) or "<root>"
                raise ConfigError(f"unknown config key {key!r}: {where} has no field {part!r}{_suggest(part, known)}")
            if depth < len(parts) - 1:
                node = node[part]
        old = node[parts[-1]]
        value = _parse_value(text, old, f"--set {key.strip()}")
        try:
            with config.unlocked() if isinstance(config, ml_collections.ConfigDict) else _nullcontext():
                node[parts[-1]] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"--set {key.strip()}={text!r}: {e}") from None
    return config


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path/to/file.py[:arg]`, applies overrides, and locks the result against new keys."""
    path, _, arg = spec.partition(":")
    module = _load_module(path)
    config = module.get_config(arg or None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict")
    apply_overrides(config, overrides)
    config.lock()
    return config


def load_saved_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """A run's saved WORKDIR/config.json (written by `train` after validation), with overrides, locked."""
    import json
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a readable config ({e})") from None
    config = apply_overrides(ml_collections.ConfigDict(data), overrides)
    config.lock()
    return config


def dataclass_from_config(cls, values: Mapping[str, Any] | ml_collections.ConfigDict, where: str):
    """Builds a frozen dataclass from a config section; unknown or missing fields are named in the error."""
    data = values.to_dict() if isinstance(values, ml_collections.ConfigDict) else dict(values)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        hints = "".join(_suggest(k, names) for k in unknown)
        raise ConfigError(f"unknown key(s) {unknown} in {where}{hints}; known: {sorted(names)}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"missing key(s) {missing} in {where}")
    for f in dataclasses.fields(cls):
        if f.name in data and isinstance(data[f.name], list):
            data[f.name] = tuple(data[f.name])
    return cls(**data)
