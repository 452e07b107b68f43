"""From a YAML file to nested dataclasses, each value checked against its field's annotation.

The annotation is the whole rule for one field: its type (``int``; ``float``, which also takes
an int and a YAML 1.1 string such as ``3e-4``; ``str``; ``bool``; ``list[T]``; ``dict[K, V]``),
its choices (``Literal[...]``), its range (``Annotated[int, Range(ge=1)]``) and whether it may
be null (``T | None``). A bad value is one ConfigError that names its dotted key::

    r.yaml: key 'grpo.top_p' must be > 0 and <= 1, got 1.5

Rules between fields belong to the caller (``rl/config.py``'s ``_check``).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rl.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field, checked at load: ``Annotated[float, Range(gt=0, le=1)]``.

    >>> str(Range(gt=0, le=1)), 1.0 in Range(gt=0, le=1), 0 in Range(gt=0, le=1)
    ('> 0 and <= 1', True, False)
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __contains__(self, x: float) -> bool:
        return (
            (self.ge is None or x >= self.ge)
            and (self.gt is None or x > self.gt)
            and (self.le is None or x <= self.le)
            and (self.lt is None or x < self.lt)
        )

    def __str__(self) -> str:
        bounds = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return " and ".join(f"{op} {bound:g}" for op, bound in bounds if bound is not None)


def read_mapping(path: str | Path, overrides: typing.Sequence[str] = ()) -> dict[str, Any]:
    """The YAML mapping in ``path`` with ``key=value`` overrides (dotted keys, YAML values)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of keys, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. grpo.steps=10")
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    return raw


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part!r} is not a section")
    node[leaf] = value


def build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``raw``; unknown keys, and values
    that do not fit their annotation, raise ConfigError naming ``prefix + key``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: key '{prefix.rstrip('.')}' must be a mapping")
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = build(kind, value, f"{prefix}{key}.", source)
        else:
            kwargs[key] = coerce(kind, value, f"{prefix}{key}", source)
    return cls(**kwargs)


def coerce(kind: Any, value: Any, key: str, source: str) -> Any:
    """``value`` checked against the annotation ``kind`` (see the module docstring).

    >>> coerce(typing.Annotated[float, Range(gt=0)], "3e-4", "grpo.lr", "r.yaml")
    0.0003
    >>> coerce(typing.Literal["k1", "k3"] | None, "k2", "grpo.kl_estimator", "r.yaml")
    Traceback (most recent call last):
    rl.errors.ConfigError: r.yaml: key 'grpo.kl_estimator' must be one of ['k1', 'k3'] or null, got 'k2'
    """
    kind, nullable = _strip_none(kind)
    if value is None and nullable:
        return None
    or_null = " or null" if nullable else ""
    ranges: tuple[Range, ...] = ()
    if typing.get_origin(kind) is typing.Annotated:
        kind, *extras = typing.get_args(kind)
        ranges = tuple(e for e in extras if isinstance(e, Range))
    typed = _typed(kind, value, key, source)
    if typed is _MISFIT:
        raise ConfigError(
            f"{source}: key '{key}' must be {_describe(kind)}{or_null}, got {value!r}"
        )
    for bounds in ranges:
        if typed not in bounds:
            raise ConfigError(f"{source}: key '{key}' must be {bounds}{or_null}, got {value!r}")
    return typed


_MISFIT = object()


def _strip_none(kind: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, ``(kind, False)`` for a type that is not a union."""
    if typing.get_origin(kind) not in (typing.Union, types.UnionType):
        return kind, False
    options = [o for o in typing.get_args(kind) if o is not type(None)]
    if len(options) != 1:
        raise TypeError(f"config fields are T or T | None, not {kind}")
    return options[0], True


def _typed(kind: Any, value: Any, key: str, source: str) -> Any:
    """``value`` as the (non-union, non-annotated) type ``kind``, or ``_MISFIT``."""
    origin = typing.get_origin(kind) or kind
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is Any:
        return value
    if origin is typing.Literal:
        return value if value in typing.get_args(kind) else _MISFIT
    if origin is float and is_number:
        return float(value)
    if origin is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
        try:
            return float(value)
        except ValueError:
            return _MISFIT
    if origin is int:
        return value if is_number and isinstance(value, int) else _MISFIT
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(kind) or (Any,)
        return [coerce(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        k_kind, v_kind = typing.get_args(kind) or (Any, Any)
        return {
            coerce(k_kind, k, f"{key}.{k}", source): coerce(v_kind, v, f"{key}.{k}", source)
            for k, v in value.items()
        }
    if origin in (str, bool) and isinstance(value, origin):
        return value
    return _MISFIT


def _describe(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return f"one of {sorted(typing.get_args(kind))}"
    return getattr(typing.get_origin(kind) or kind, "__name__", str(kind))


def import_object(spec: str, key: str) -> Any:
    """``module:function`` -> the function; errors name the recipe key."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"recipe key '{key}': cannot import {spec!r}: {e}") from None
