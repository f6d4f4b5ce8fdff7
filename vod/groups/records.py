"""Frozen dataclass records <-> plain JSON dicts.

State snapshots and events both leave the process (Raft snapshots, AMP
pushes), and both must come back equal to what went out. JSON has lists but no
tuples, so the one conversion lives here rather than in every record class.
"""

import dataclasses
import typing
from typing import Any, Mapping, TypeVar

R = TypeVar("R")


def record_to_dict(record: Any) -> dict[str, Any]:
    """The record's fields as a JSON-able dict (tuples become lists)."""
    names = _FIELD_NAMES.get(type(record))
    if names is None:  # dataclasses.fields() is slow, and events are converted on every apply
        names = _FIELD_NAMES[type(record)] = tuple(field.name for field in dataclasses.fields(record))
    return {name: _plain(getattr(record, name)) for name in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def record_from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
    """Rebuild a `cls` record from `record_to_dict` output; ValueError if it does not fit."""
    shape = _SHAPES.get(cls)
    if shape is None:
        # dataclasses.fields() and typing.get_origin() per field cost more than building the record:
        # members parse every pushed event through here (a fifth of a bench client's CPU before).
        fields = dataclasses.fields(cls)
        shape = _SHAPES[cls] = (frozenset(field.name for field in fields),
                                tuple((field.name, typing.get_origin(field.type) is tuple) for field in fields))
    names, typed = shape
    if not isinstance(data, Mapping) or data.keys() != names:
        raise ValueError(f"{cls.__name__} needs exactly the fields {sorted(names)}")
    return cls(**{name: _as_tuple(name, data[name]) if is_tuple else data[name] for name, is_tuple in typed})


# cls -> (its field names, ((name, declared as a tuple), ...) in field order)
_SHAPES: dict[type, tuple[frozenset[str], tuple[tuple[str, bool], ...]]] = {}


def is_version(value: Any, version: int) -> bool:
    """`value == version` without letting `True` or `1.0` pass for 1."""
    return type(value) is int and value == version


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _as_tuple(name: str, value: Any) -> tuple:
    # Only fields declared as tuples turn back into tuples; a JSON payload that
    # happens to hold a list must stay a list.
    if not isinstance(value, list):
        raise ValueError(f"field {name} must be a list, not {value!r}")
    return tuple(value)
