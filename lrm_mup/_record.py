"""The base of every typed record that stages exchange: a frozen dataclass with a schema name, a schema version and a
strict-JSON round trip.

    @dataclass(frozen=True)
    class RunResult(Record):
        SCHEMA: ClassVar[str] = "run-result"
        VERSION: ClassVar[int] = 1
        status: str
        val_bpb: float | None

    RunResult.from_dict(result.to_dict()) == result

`to_dict()` writes {"schema": "lrm_mup/run-result", "version": 1, field: value, ...}: nested records as their own
dicts, tuples as lists, non-finite floats as null (strict JSON). `from_dict` refuses another schema, a newer version,
unknown or missing fields with one line (`RecordError`), and rebuilds nested records, tuples and dicts from the
field types. A record read from disk is therefore exactly the record that was written.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ._files import write_text_atomic
from .errors import RecordError

R = TypeVar("R", bound="Record")
_PREFIX = "lrm_mup/"


@dataclasses.dataclass(frozen=True)
class Record:
    """Base class: subclasses are frozen dataclasses that set SCHEMA (and VERSION when their layout changes)."""

    SCHEMA: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"schema": _PREFIX + self.SCHEMA, "version": self.VERSION}
        for f in dataclasses.fields(self):
            out[f.name] = _dump(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[R], d: dict, *, source: str = "") -> R:
        where = f"{source}: " if source else ""
        if not isinstance(d, dict):
            raise RecordError(f"{where}a {cls.SCHEMA} record must be a JSON object, not {type(d).__name__}")
        schema, version = d.get("schema"), d.get("version")
        if schema != _PREFIX + cls.SCHEMA:
            raise RecordError(f"{where}schema {schema!r} is not {_PREFIX + cls.SCHEMA!r}")
        if not (isinstance(version, int) and 1 <= version <= cls.VERSION):
            raise RecordError(f"{where}{cls.SCHEMA} version {version!r} is not supported (this lrm-mup reads versions "
                              f"1 to {cls.VERSION}): upgrade lrm-mup or rewrite the record")
        hints = typing.get_type_hints(cls)
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names) - {"schema", "version"})
        if unknown:
            raise RecordError(f"{where}{cls.SCHEMA} record has unknown field {unknown[0]!r}")
        kwargs = {}
        for name, f in names.items():
            if name not in d:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise RecordError(f"{where}{cls.SCHEMA} record lacks field {name!r}")
                continue
            kwargs[name] = _load(hints[name], d[name], f"{where}{cls.SCHEMA}.{name}")
        return cls(**kwargs)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The strict-JSON text; with `path`, also written there atomically."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"
        if path is not None:
            write_text_atomic(path, text)
        return text

    @classmethod
    def from_json(cls: type[R], path_or_text: str | os.PathLike) -> R:
        """From a file path, or from JSON text (a string starting with '{')."""
        is_text = isinstance(path_or_text, str) and path_or_text.lstrip().startswith("{")
        source = "<text>" if is_text else str(path_or_text)
        try:
            text = path_or_text if is_text else Path(path_or_text).read_text(encoding="utf-8")
            raw = json.loads(text)
        except FileNotFoundError:
            raise RecordError(f"{source} does not exist") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise RecordError(f"{source} is not a readable {cls.SCHEMA} record ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); rewrite it or remove it") from None
        return cls.from_dict(raw, source=source)


def _dump(x):
    if isinstance(x, Record):
        return x.to_dict()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _dump(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_dump(v) for v in x]
    return x


def _load(tp, value, where: str):
    """`value` (parsed JSON) as type `tp`: nested records, tuples, dicts, optionals; plain JSON values pass."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        concrete = [a for a in args if a is not type(None)]
        if len(concrete) == 1:
            return _load(concrete[0], value, where)
        if value is None and float in concrete:
            return math.nan
        return value
    if value is None and tp is float:
        return math.nan  # a non-finite float was written as null
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.from_dict(value, source=where)
    if origin is tuple:
        if not isinstance(value, list):
            raise RecordError(f"{where} must be a list, not {type(value).__name__}")
        item = args[0] if args else Any
        if len(args) == 2 and args[1] is Ellipsis or len(args) <= 1:
            return tuple(_load(item, v, where) for v in value)
        return tuple(_load(a, v, where) for a, v in zip(args, value))
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(f"{where} must be a list, not {type(value).__name__}")
        return [_load(args[0] if args else Any, v, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where} must be an object, not {type(value).__name__}")
        kt, vt = args if args else (Any, Any)
        return {(int(k) if kt is int else k): _load(vt, v, where) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise RecordError(f"{where} must be {tp.__name__}, not {value!r}")
    return value
