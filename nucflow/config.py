"""Frozen-dataclass configuration loaded from YAML, with strict key checking.

Every configuration object in nucflow is a frozen dataclass. :func:`load_config` builds one
from a YAML file (optionally layered over defaults), refusing unknown keys with a message
that names the key and the file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nucflow.errors import ConfigError

__all__ = ["CONFIG_DIR", "config_hash", "config_file", "from_mapping", "load_config", "read_yaml", "to_dict"]

T = TypeVar("T")

#: The shipped configuration files (``nucflow/configs/``), package data read with importlib.resources,
#: so a normal (non-editable) install finds them as a source checkout does.
CONFIG_DIR: Traversable = resources.files("nucflow") / "configs"


def config_file(name_or_path: str | Path, folder: str = "", *, what: str = "configuration") -> Traversable:
    """A YAML file given by path (``*.yaml``/``*.yml``, or any existing file), or by the name of one
    shipped in ``nucflow/configs/<folder>/`` (``"ki67"``, ``"cpu"``).

    Raises ConfigError naming the shipped names when neither exists.
    """
    shipped = CONFIG_DIR / folder if folder else CONFIG_DIR
    names = sorted(p.name.rsplit(".", 1)[0] for p in shipped.iterdir() if p.name.endswith(".yaml"))
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{what} file {path} does not exist; shipped: {', '.join(names)}")
        return path
    found = shipped / f"{name_or_path}.yaml"
    if not found.is_file():
        raise ConfigError(f"unknown {what} {str(name_or_path)!r}; known: {', '.join(names)}, or pass a .yaml file")
    return found


def read_yaml(path: str | Path | Traversable) -> dict[str, Any]:
    """Read a YAML mapping; an unreadable file or a non-mapping document is a ConfigError."""
    path = Path(path) if isinstance(path, str) else path
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the --config path") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def from_mapping(cls: type[T], data: Mapping[str, Any], *, source: str = "<config>") -> T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclass fields.

    Unknown keys raise :class:`ConfigError` naming the key, the allowed keys and ``source``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r} in {source} (section {cls.__name__}); "
            f"allowed keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f"{source}:{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid configuration in {source}: {exc}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    nested = _dataclass_in(hint)
    if nested is not None and isinstance(value, Mapping):
        return from_mapping(nested, value, source=where)
    if _accepts_float(hint) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # YAML's 20000 and the default 20000.0 must be the same setting
    if hint is tuple or typing.get_origin(hint) is tuple:
        return tuple(value) if isinstance(value, list) else value
    return value


def _accepts_float(hint: Any) -> bool:
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return hint is float or (union and float in typing.get_args(hint))


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                return arg
    return None


def load_config(cls: type[T], path: str | Path | Traversable | None = None, **overrides: Any) -> T:
    """Load ``cls`` from YAML ``path`` (or its defaults when None), then apply ``overrides``.

    Overrides whose value is None are ignored, so CLI options left unset keep the file's value.
    """
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_mapping(cls, data, source=str(path) if path is not None else "<defaults>")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def config_hash(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (configs as dicts, model ids, versions)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
