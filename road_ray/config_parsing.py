"""Reading configuration values: YAML as a user means it, and dotted keys checked against typed dataclasses.

Generic over dataclasses (no road-ray defaults here: those are ``road_ray/config.py``). A value of
the wrong type is a :class:`ConfigError` naming the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the key and what was expected."""


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check/convert ``value`` to the field's annotation, or raise ConfigError naming the key."""
    origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: unexpected value {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # e.g. "1e-2" from JSON or a YAML 1.1 document
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported annotation {annotation!r}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def apply_mapping(obj: Any, mapping: dict[str, Any], prefix: str = "") -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {mapping!r}")
    hints = _hints(type(obj))
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {', '.join(hints)}")
        annotation = hints[key]
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            apply_mapping(current, value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(full, value, annotation))


class _YAMLLoader(yaml.SafeLoader):
    """YAML as a user means it: ``1e-2`` is a number. PyYAML follows YAML 1.1, where a float needs
    a dot (``1.0e-2``) and ``1e-2`` is a string; YAML 1.2 and every other parser read it as 0.01."""


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?\.?[0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text (config files, search spaces, ``--set`` values) with exponent floats."""
    return yaml.load(text, Loader=_YAMLLoader)


def parse_scalar(text: str) -> Any:
    """An override's value is parsed as YAML (``0.1``, ``1e-2``, ``true``; ``3x3`` stays a string)."""
    try:
        return load_yaml(text) if text != "" else ""
    except yaml.YAMLError:
        return text
