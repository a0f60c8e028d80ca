"""Frozen-dataclass configuration loaded from YAML, with strict key checking.

Every configuration object in nucflow is a frozen dataclass. :func:`load_config` builds one
from a YAML file (optionally layered over defaults), refusing unknown keys with a message
that names the key and the file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nucflow.errors import ConfigError

__all__ = [
    "CONFIG_DIR",
    "InvalidValue",
    "Rule",
    "at_least",
    "below",
    "between",
    "check_fields",
    "config_file",
    "config_hash",
    "from_mapping",
    "load_config",
    "odd",
    "one_of",
    "parse_bool",
    "parse_float",
    "parse_int",
    "parse_str",
    "positive",
    "read_yaml",
    "setting",
    "to_dict",
]

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


# --------------------------------------------------------------------------- checked settings
#
# A configuration dataclass declares each field's type by annotation and its range with
# ``setting(default, *rules)``; its ``__post_init__`` calls :func:`check_fields` (every field
# parsed against its type with the ``parse_*`` helpers, then its rules) and raises
# :class:`InvalidValue` for cross-field checks. :func:`from_mapping` adds the key's full path
# (``inference.margin``) and the file to every such error, so a bad value is always a ConfigError
# that says where it is, what it is and what was expected.


class InvalidValue(ConfigError):
    """A setting holds a value of the wrong type or out of range: ``key`` must ``requirement``.

    ``nullable``: null is also accepted. ``template`` words a cross-field check differently.
    """

    def __init__(self, key: str, value: Any, requirement: str, *, nullable: bool = False,
                 template: str = "{key} must {requirement}, got {value!r}") -> None:
        self.key, self.value, self.requirement = key, value, requirement
        self.nullable, self.template = nullable, template
        super().__init__(self.describe())

    def describe(self, prefix: str = "", source: str | None = None) -> str:
        text = self.template.format(key=prefix + self.key, value=self.value, requirement=self.requirement)
        null = " (null is also accepted)" if self.nullable else ""
        where = f" (in {source})" if source else ""
        return f"{text}{null}{where}"

    def located(self, prefix: str, source: str) -> ConfigError:
        """The same error with the key's path from the file's top level and the file named."""
        return ConfigError(self.describe(prefix, source))


@dataclasses.dataclass(frozen=True)
class Rule:
    """A range rule of a setting: ``phrase`` completes "KEY must ...", given the type's noun."""

    test: Callable[[Any], bool]
    phrase: Callable[[str], str]


def positive() -> Rule:
    """> 0 ("a positive integer" / "a positive number")."""
    return Rule(lambda v: v > 0, lambda noun: "be a positive " + ("integer" if noun == "an integer" else "number"))


def at_least(low: float) -> Rule:
    return Rule(lambda v: v >= low, lambda noun: f"be {noun} >= {low}")


def between(low: float, high: float, *, closed: bool = False) -> Rule:
    """In (low, high), or [low, high] when ``closed``."""
    if closed:
        return Rule(lambda v: low <= v <= high, lambda noun: f"lie in [{low}, {high}]")
    return Rule(lambda v: low < v < high, lambda noun: f"lie in ({low}, {high})")


def below(high: float) -> Rule:
    return Rule(lambda v: v < high, lambda noun: f"be {noun} < {high}")


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v: v in choices, lambda noun: f"be one of {', '.join(repr(c) for c in choices)}")


def odd() -> Rule:
    return Rule(lambda v: v >= 1 and v % 2 == 1, lambda noun: "be an odd number >= 1")


def setting(default: Any = dataclasses.MISSING, *rules: Rule, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with range ``rules``, checked by :func:`check_fields`."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"rules": rules})


def parse_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    return value


def parse_float(value: Any) -> float:
    """A finite number; YAML's 20000 and the default 20000.0 are the same setting."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError
    return float(value)


def parse_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


_PARSERS: dict[Any, tuple[Callable[[Any], Any], str]] = {
    int: (parse_int, "an integer"),
    float: (parse_float, "a number"),
    bool: (parse_bool, "true or false"),
    str: (parse_str, "a string"),
}


def parse_value(hint: Any, value: Any) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, a dataclass, X | None, tuple[X, ...],
    Mapping); raises TypeError when it is not one."""
    if hint in _PARSERS:
        return _PARSERS[hint][0](value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for arg in inner:
            try:
                return parse_value(arg, value)
            except TypeError:
                continue
        raise TypeError
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise TypeError
        item = args[0] if args else Any
        return tuple(value if item is Any else (parse_value(item, v) for v in value))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            raise TypeError
        return value
    if origin in (Mapping, dict) or hint in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise TypeError
        return value
    return value  # Any, or a type this loader does not check


def _noun(hint: Any) -> str:
    if hint in _PARSERS:
        return _PARSERS[hint][1]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_noun(a) for a in args if a is not type(None))
    if origin is tuple:
        return f"a list of {_noun(args[0]).split(' ', 1)[-1]}s" if args else "a list"
    if dataclasses.is_dataclass(hint) or origin in (Mapping, dict) or hint in (Mapping, dict):
        return "a mapping of keys"
    return "a value"


def requirement(hint: Any, rules: Sequence[Rule]) -> str:
    """What a field of type ``hint`` with ``rules`` must be, completing "KEY must ..."."""
    noun = _noun(hint)
    return " and ".join(rule.phrase(noun) for rule in rules) if rules else f"be {noun}"


def _nullable(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


_SPECS: dict[type, tuple[tuple[str, Any, tuple[Rule, ...]], ...]] = {}


def _field_specs(cls: type) -> tuple[tuple[str, Any, tuple[Rule, ...]], ...]:
    if cls not in _SPECS:
        hints = typing.get_type_hints(cls)
        _SPECS[cls] = tuple((f.name, hints[f.name], tuple(f.metadata.get("rules", ())))
                            for f in dataclasses.fields(cls))
    return _SPECS[cls]


def check_fields(config: Any) -> None:
    """Parse every field of dataclass instance ``config`` against its type (storing the parsed
    value: 20000 -> 20000.0 for a float, a list -> a tuple) and check its rules.

    Raises :class:`InvalidValue` naming the first bad field, its value and what it must be.
    """
    for name, hint, rules in _field_specs(type(config)):
        value = getattr(config, name)
        try:
            parsed = parse_value(hint, value)
        except TypeError:
            raise InvalidValue(name, value, requirement(hint, rules), nullable=_nullable(hint)) from None
        if parsed is not value:
            object.__setattr__(config, name, parsed)
        if parsed is not None and not all(rule.test(parsed) for rule in rules):
            raise InvalidValue(name, value, requirement(hint, rules), nullable=_nullable(hint))


def from_mapping(cls: type[T], data: Mapping[str, Any], *, source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclass fields.

    Unknown keys, and values of the wrong type or out of range, raise :class:`ConfigError`
    naming the key's full path (``prefix`` + key), the value and ``source``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" (at {prefix}{unknown[0]})" if prefix else ""
        raise ConfigError(
            f"unknown config key {unknown[0]!r} in {source}{where}; allowed keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        nested = _dataclass_in(hints[name])
        if nested is not None and isinstance(value, Mapping):
            value = from_mapping(nested, value, source=source, prefix=f"{prefix}{name}.")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except InvalidValue as exc:
        raise exc.located(prefix, source) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid configuration in {source}{f' ({prefix[:-1]})' if prefix else ''}: {exc}") from None


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
