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


def _parse_value(text: str, default: Any = None) -> Any:
    """Parses a command-line value as a Python literal, falling back to the raw string."""
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"expected a boolean, got {text!r}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(default, str) and not isinstance(value, str):
        value = text
    return value


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `key=value,key2=value2` (big_vision style) against known defaults.

    A bare word `foo` is shorthand for `foo=True` when `foo` is a boolean default.
    """
    result = dict(defaults)
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
            result[key] = _parse_value(value.strip(), defaults[key])
    return ml_collections.ConfigDict(result)


def _load_module(path: str):
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
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
        value = _parse_value(text, old)
        with config.unlocked() if isinstance(config, ml_collections.ConfigDict) else _nullcontext():
            node[parts[-1]] = value
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
