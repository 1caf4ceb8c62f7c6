"""Typed configuration: dataclasses loaded from YAML plus ``key=value`` overrides.

The dataclass is the single source of truth for every key. Loading is strict: an unknown
key, a value of the wrong type or a failed validation raises :class:`ConfigError` naming
the dotted key (and the file it came from) before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from engine.files import write_text_atomic

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML 1.2-style scalars on top of SafeLoader: only true/false are booleans (so
    `mixed_precision: no` stays the string "no") and 1e-3 is a float, not a string."""


_Loader.yaml_implicit_resolvers = {
    # YAML 1.1's yes/no booleans and its octal / base-60 / binary / hex integers go (`seed: 010`
    # is not 8, `1:30` not 90); decimal integers come back below
    ch: [(tag, rx) for tag, rx in rs if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int")]
    for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),  # a digit before e
    list("-+0123456789."),
)


class DuplicateKeyError(yaml.YAMLError):
    pass


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    # PyYAML keeps the last of two equal keys without a word: a typo'd copy of a key would
    # silently override the one the user reads
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise DuplicateKeyError(f"the key {key!r} appears twice (lines {seen[key] + 1} and "
                                    f"{key_node.start_mark.line + 1}); keep one")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def yaml_load(text: str) -> Any:
    """Parse YAML safely (no object construction) with the scalar rules above."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 -- _Loader derives from SafeLoader


class ConfigError(ValueError):
    """A configuration problem, always naming the offending key."""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it (converted where lossless)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {_type_name(tp)}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: may not be null (expected {_type_name(tp)})")
        options = [a for a in args if a is not type(None)]
        sections = [a for a in options if dataclasses.is_dataclass(a)]
        if len(options) == 1 or (isinstance(value, dict) and len(sections) == 1):
            # one candidate: its own error (e.g. an unknown key inside a section) is the useful one
            return _coerce(value, sections[0] if isinstance(value, dict) and sections else options[0], key)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return _build(tp, value, key)
    if origin in (list, tuple):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp)[:1] or (Any,)
        items = [_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        number = None
        if isinstance(value, (int, float)):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float range
                raise ConfigError(f"{key}: {value!r} is out of range") from None
        elif isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # .nan / .inf pass every `x < 0` check downstream
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if value is None:
            # a bare `~` (meant as the home folder, or left from a template) reads as null,
            # which "expected a string, got None" does not explain
            what = "path" if key.rsplit(".", 1)[-1] in ("run_dir", "path", "codes") else "string"
            raise ConfigError(f"{key}: '~' (like null or an empty value) is YAML's null, not a "
                              f"{what}; give a {what}")
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def merge(base: Any, override: Any) -> Any:
    """``override`` laid over ``base``: mappings key by key; a mapping of list indices (what
    an override such as ``model.layers.1.codebook_size=64`` becomes before the list it
    addresses is read from a file) item by item over a list; anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = merge(out[k], v) if k in out else v
        return out
    if (isinstance(base, list) and isinstance(override, dict) and override
            and all(str(k).isdigit() and int(k) < len(base) for k in override)):
        items = list(base)
        for k, v in override.items():
            items[int(k)] = merge(items[int(k)], v)
        return items
    return override


def valid_keys_hint(name: Any, keys) -> str:
    """What an unknown key's error adds: the closest valid key, and every valid one."""
    keys = sorted(keys)
    close = difflib.get_close_matches(str(name), keys, n=1)
    return ((f" (did you mean {close[0]!r}?)" if close else "")
            + (f"; valid keys here: {', '.join(keys)}" if keys else "; this section takes no keys"))


def _build(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in data:
        if name not in fields:
            full = f"{prefix}.{name}" if prefix else str(name)
            raise ConfigError(f"unknown key {full!r}{valid_keys_hint(name, fields)}")
    kwargs = {}
    for name, value in data.items():
        full = f"{prefix}.{name}" if prefix else name
        default = _field_default(fields[name])
        if isinstance(value, dict) and dataclasses.is_dataclass(default):
            # a partial section starts from the field's own default (which may differ from
            # its class's defaults, e.g. the priors' TrainConfig), not from the class
            value = merge(to_dict(default), value)
        kwargs[name] = _coerce(value, hints[name], full)
    try:
        obj = cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix}: {err}" if prefix else str(err)) from None
    return obj


def from_dict(cls: type[T], data: dict | None, source: str | None = None, prefix: str = "") -> T:
    """Build ``cls`` from a plain mapping, validating every key; errors name keys under
    ``prefix`` (the dotted place of this section in a larger config) when given."""
    try:
        obj = _build(cls, data or {}, prefix)
        validate(obj, prefix)
    except ConfigError as err:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}{err}") from None
    return obj


def validate(obj: Any, prefix: str = "") -> None:
    """Run ``validate()`` on ``obj`` and every nested dataclass, children first."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            validate(value, key)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                validate(item, f"{key}.{i}")
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigError as err:
            msg = str(err)
            raise ConfigError(f"{prefix}.{msg}" if prefix else msg) from None


def non_default(obj: Any) -> Any:
    """A dataclass as a dict without the fields that hold their default (recursively): what
    identity hashes read, so that a new option, off by default, changes no identity."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                sub = non_default(value)
                if sub:
                    out[f.name] = sub
            elif value != _field_default(f):
                out[f.name] = non_default(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [non_default(v) for v in obj]
    return obj


def to_dict(obj: Any) -> Any:
    """Plain (YAML/JSON-serialisable) form of a config."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 3e-4). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    """Set a dotted path inside nested dicts/lists (list items addressed by index)."""
    node: Any = data
    for i, part in enumerate(path[:-1]):
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {'.'.join(path)!r}: no list item {where!r}")
            node = node[int(part)]
        else:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {'.'.join(path)!r}: {where!r} is not a section")
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {'.'.join(path)!r}: no list item {last!r}")
        node[int(last)] = value
    else:
        node[last] = value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {err.start})") from None
    except DuplicateKeyError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    prepare: typing.Callable[[dict], dict] | None = None,
) -> T:
    """Load ``cls`` from an optional YAML file plus ``key=value`` overrides.

    ``prepare`` may expand the raw mapping (e.g. presets) before it is type-checked.
    """
    data = read_yaml(path) if path is not None else {}
    if path is not None and not data:
        # a file with nothing in it (blank, only comments) would start a run of every default,
        # most likely not the one meant (a config saved empty, the wrong file named)
        raise ConfigError(
            f"{path}: the config file sets nothing (empty, or only comments); put the settings "
            f"in it, or leave the file out to run on the defaults and key=value overrides")
    parsed = [parse_override(text) for text in overrides]
    for keys, value in parsed:
        apply_override(data, keys, value)
    if prepare is not None:
        try:
            data = prepare(data)
        except ConfigError as err:
            if path is None:
                raise
            raise ConfigError(f"{path}: {err}") from None  # named like from_dict's errors
    obj = from_dict(cls, data, source=str(path) if path else None)
    _check_ignored_steps(obj, [keys for keys, _ in parsed], path)
    if isinstance(getattr(obj, "run_dir", None), str):
        # `~` is the home folder wherever a folder is named, also when quoted past the shell:
        # left as it is, the run would go to a literal `./~` while Path.expanduser elsewhere
        # looked in the home folder
        object.__setattr__(obj, "run_dir", os.path.expanduser(obj.run_dir))
    return obj


def _check_ignored_steps(obj: Any, override_keys: list[list[str]], path: str | Path | None) -> None:
    """A ``...train.steps=N`` override on a config whose train section sets ``epochs`` would
    be ignored (epochs decide the run's length): refuse it rather than train another length."""
    for keys in override_keys:
        if keys[-1] != "steps" or keys[:-1] + ["epochs"] in override_keys:
            continue
        section: Any = obj
        for part in keys[:-1]:
            if isinstance(section, (list, tuple)) and part.isdigit() and int(part) < len(section):
                section = section[int(part)]
            else:
                section = getattr(section, part, None)
        epochs = getattr(section, "epochs", None)
        if dataclasses.is_dataclass(section) and epochs is not None:
            where = f" (from {path})" if path else ""
            name = ".".join(keys[:-1])
            raise ConfigError(
                f"{'.'.join(keys)}: has no effect while {name}.epochs={epochs}{where} sets the "
                f"run's length; add {name}.epochs=null to train by steps")


class _Dumper(yaml.SafeDumper):
    """Writes what :func:`yaml_load` reads back unchanged: a string such as "1e3" or "010"
    that the loader would take for a number is quoted."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = None
    try:
        if yaml_load(text) != text:
            style = "'"
    except yaml.YAMLError:
        style = "'"
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


def yaml_dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def save_yaml(obj: Any, path: str | Path) -> None:
    write_text_atomic(path, yaml_dump(to_dict(obj)))  # a truncated config.yaml would block resume
