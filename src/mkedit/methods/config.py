"""What every method's hyperparameters share: a frozen dataclass that documents, copies, saves and parses itself.

A field's help text is the string literal written under it (the convention the configs already follow),
read once from the class source, so ``mkedit methods`` and ``--set`` errors show the same words as the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from functools import cache
from typing import Any, Literal, Self, get_args, get_origin

from mkedit.errors import MkeditError


class ConfigError(MkeditError, ValueError):
    """A hyperparameter override that names no field or whose value does not parse."""


class MethodConfig:
    """Mixin for the ``@dataclass(frozen=True)`` config of a method."""

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The inverse of :meth:`to_dict`; an unknown field is an error (a config of another method)."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        hints = typing.get_type_hints(cls)
        values = {k: tuple(v) if isinstance(v, list) and _is_tuple(hints[k]) else v for k, v in data.items()}
        return cls(**values)

    def with_overrides(self, overrides: dict[str, str]) -> Self:
        """A copy with ``--set KEY=VALUE`` strings parsed by each field's type; names the valid keys on error."""
        hints = typing.get_type_hints(type(self))
        names = [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        changes: dict[str, Any] = {}
        for key, text in overrides.items():
            if key not in hints or key not in names:
                raise ConfigError(
                    f"unknown hyperparameter {key!r} for {type(self).__name__}; valid: {', '.join(names)}"
                )
            try:
                changes[key] = parse_value(hints[key], text)
            except ValueError as exc:
                raise ConfigError(f"--set {key}={text}: {exc} (expected {describe_type(hints[key])})") from exc
        try:
            return self.replace(**changes)
        except ValueError as exc:
            if isinstance(exc, MkeditError):
                raise
            raise ConfigError(str(exc)) from exc

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Field name -> the help text written under it in the class body (empty when none)."""
        return _field_docs(cls)

    @classmethod
    def describe_fields(cls) -> list[tuple[str, str, str]]:
        """(name, type, help) of every field, for listings."""
        hints = typing.get_type_hints(cls)
        docs = cls.field_docs()
        return [(f.name, describe_type(hints[f.name]), docs.get(f.name, "")) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """``["a=1", "b=x,y"]`` -> ``{"a": "1", "b": "x,y"}``; a pair without ``=`` is an error."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _is_tuple(tp: Any) -> bool:
    return get_origin(tp) is tuple or any(get_origin(a) is tuple for a in get_args(tp))


def _optional_inner(tp: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0]
    return None


def parse_value(tp: Any, text: str) -> Any:
    """Parse ``text`` as a value of type ``tp`` (bool, int, float, str, Literal, tuple[...], X | None)."""
    inner = _optional_inner(tp)
    if inner is not None:
        return None if text.lower() in ("none", "null", "") else parse_value(inner, text)
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        for choice in choices:
            if str(choice) == text:
                return choice
        raise ValueError(f"not one of {', '.join(map(str, choices))}")
    if origin is tuple:
        args = get_args(tp)
        item = args[0] if args else str
        parts = [p.strip() for p in text.split(",") if p.strip()]
        return tuple(parse_value(item, p) for p in parts)
    if tp is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("not a boolean")
    if tp in (int, float, str):
        return tp(text)
    raise ValueError(f"cannot parse a {tp}")


def describe_type(tp: Any) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{describe_type(inner)} or none"
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(map(str, get_args(tp)))
    if origin is tuple:
        args = get_args(tp)
        return f"comma list of {describe_type(args[0]) if args else 'str'}"
    return getattr(tp, "__name__", str(tp))


@cache
def _field_docs(cls: type) -> dict[str, str]:
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, [*body[1:], None], strict=True):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs
