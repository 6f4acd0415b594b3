"""The filter language: parse a JSON filter into a small tree, compile it for Milvus and SQL.

Language (docs/api.md#filters): ``{"k": v}`` is equality on metadata key ``k`` (dots walk
into nested objects; ``metadata.k`` names a key that collides with a field); operators
``$eq $ne $in $nin $gt $gte $lt $lte $exists``; combinators ``$and $or $not``; the fields
``id``, ``type``, ``importance`` and ``created_at`` filter the same way.

Milvus Lite 2.5.1 evaluates no ``not``, so parsing pushes every negation down to the leaves
(negation normal form). Semantics follow MongoDB: ``$ne``/``$nin`` match memories that lack
the key, range operators only match memories that have it, and ``$not`` of a range also
matches memories without the key.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Union

from somafractalmemory.errors import InvalidFilter

COLUMNS = ("id", "type", "importance", "created_at")
MEMORY_TYPES = ("episodic", "semantic", "summary")
MAX_NODES = 256
MAX_IN_VALUES = 1000
MAX_DEPTH = 8
MAX_NESTING = 16
"""How deep `$and`/`$or`/`$not` may nest (Milvus fails on expression trees about 60 deep)."""
# No "__" (Django would read a lookup) and not all digits (SQL would read an array index).
_SEGMENT = re.compile(r"^(?!\d+$)(?!.*__)[A-Za-z0-9_\-]{1,64}$")
_NEGATE = {
    "$eq": "$ne",
    "$ne": "$eq",
    "$in": "$nin",
    "$nin": "$in",
    "$gt": "$lte",
    "$gte": "$lt",
    "$lt": "$gte",
    "$lte": "$gt",
}
_RANGE = {"$gt", "$gte", "$lt", "$lte"}
_MILVUS_OP = {"$eq": "==", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Field:
    """A column (`path` of one name in COLUMNS, `column=True`) or a metadata key path."""

    path: tuple[str, ...]
    column: bool = False

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class Compare:
    field: Field
    op: str
    value: Scalar | tuple[Scalar, ...]


@dataclass(frozen=True)
class Exists:
    field: Field
    present: bool


@dataclass(frozen=True)
class All:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Node, ...]


Node = Union[Compare, Exists, All, AnyOf]  # noqa: UP007 - recursive alias needs Union


def parse(spec: Any) -> Node | None:
    """Validate a filter object and return its tree in negation normal form (None: no filter)."""
    if spec is None or spec == {}:
        return None
    if not isinstance(spec, dict):
        raise InvalidFilter("filters must be a JSON object")
    counter = [0]
    tree = _parse_object(spec, negate=False, counter=counter)
    if _nesting(tree) > MAX_NESTING:
        raise InvalidFilter(f"filters nest $and, $or and $not at most {MAX_NESTING} deep")
    return tree


def _nesting(node: Node) -> int:
    if isinstance(node, All | AnyOf):
        return 1 + max(_nesting(i) for i in node.items)
    return 0


def _count(counter: list[int]) -> None:
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise InvalidFilter(f"filter has more than {MAX_NODES} conditions")


def _combine(items: list[Node], *, conjunction: bool) -> Node:
    if len(items) == 1:
        return items[0]
    return All(tuple(items)) if conjunction else AnyOf(tuple(items))


def _parse_object(spec: dict[str, Any], *, negate: bool, counter: list[int]) -> Node:
    if not spec:
        raise InvalidFilter("empty filter object")
    parts: list[Node] = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise InvalidFilter("filter keys must be strings")
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InvalidFilter(f"{key} takes a non-empty list of filters")
            subs = []
            for sub in value:
                if not isinstance(sub, dict):
                    raise InvalidFilter(f"{key} items must be objects")
                subs.append(_parse_object(sub, negate=negate, counter=counter))
            # De Morgan: not(a and b) == not a or not b.
            parts.append(_combine(subs, conjunction=(key == "$and") != negate))
        elif key == "$not":
            if not isinstance(value, dict):
                raise InvalidFilter("$not takes a filter object")
            parts.append(_parse_object(value, negate=not negate, counter=counter))
        elif key.startswith("$"):
            raise InvalidFilter(f"unknown operator {key!r} at the top level", details={"key": key})
        else:
            parts.append(_parse_field(_field(key), value, negate=negate, counter=counter))
    # The keys of one object are joined by AND (OR once negated).
    return _combine(parts, conjunction=not negate)


def _field(key: str) -> Field:
    if key in COLUMNS:
        return Field((key,), column=True)
    path = key.removeprefix("metadata.") if key.startswith("metadata.") else key
    segments = tuple(path.split("."))
    if len(segments) > MAX_DEPTH or not all(_SEGMENT.match(s) for s in segments):
        raise InvalidFilter(
            f"invalid metadata key {key!r}: use letters, digits, '_' and '-', dots for nesting",
            details={"key": key},
        )
    return Field(segments)


def _parse_field(field: Field, value: Any, *, negate: bool, counter: list[int]) -> Node:
    if not isinstance(value, dict):
        return _leaf(field, "$eq", value, negate=negate, counter=counter)
    if not value:
        raise InvalidFilter(f"empty operator object for {field.dotted!r}")
    parts: list[Node] = []
    for op, operand in value.items():
        if op == "$not":
            if not isinstance(operand, dict):
                raise InvalidFilter("$not on a field takes an operator object")
            parts.append(_parse_field(field, operand, negate=not negate, counter=counter))
        else:
            parts.append(_leaf(field, op, operand, negate=negate, counter=counter))
    return _combine(parts, conjunction=not negate)


def _leaf(field: Field, op: str, operand: Any, *, negate: bool, counter: list[int]) -> Node:
    _count(counter)
    if op == "$exists":
        if not isinstance(operand, bool):
            raise InvalidFilter("$exists takes true or false")
        if field.column:
            # Columns always exist.
            return _always(operand != negate)
        return Exists(field, present=operand != negate)
    if op not in _NEGATE:
        raise InvalidFilter(f"unknown operator {op!r}", details={"operator": op})
    value = _operand(field, op, operand)
    if not negate:
        return Compare(field, op, value)
    inverse = Compare(field, _NEGATE[op], value)
    if op in _RANGE and not field.column:
        # not(x > 5) also holds when x is missing.
        return AnyOf((inverse, Exists(field, present=False)))
    return inverse


def _always(truth: bool) -> Node:
    # importance is never negative, so this is a constant without a `true` literal.
    return Compare(Field(("importance",), column=True), "$gte" if truth else "$lt", 0)


def _operand(field: Field, op: str, operand: Any) -> Scalar | tuple[Scalar, ...]:
    if op in ("$in", "$nin"):
        if not isinstance(operand, list) or not operand:
            raise InvalidFilter(f"{op} takes a non-empty list")
        if len(operand) > MAX_IN_VALUES:
            raise InvalidFilter(f"{op} takes at most {MAX_IN_VALUES} values")
        values = tuple(_scalar(field, op, v) for v in operand)
        kinds = {_kind(v) for v in values}
        if len(kinds) > 1:
            raise InvalidFilter(
                f"{op} values must all be of one type (strings, numbers or booleans)"
            )
        return values
    value = _scalar(field, op, operand)
    if op in _RANGE and _kind(value) != "number":
        raise InvalidFilter(f"{op} compares numbers (and created_at times)")
    return value


def _kind(value: Scalar) -> str:
    if isinstance(value, bool):
        return "bool"
    return "str" if isinstance(value, str) else "number"


def _scalar(field: Field, op: str, value: Any) -> Scalar:
    name = field.path[0] if field.column else None
    if name == "created_at":
        return to_epoch_ms(value)
    if name == "type":
        if op in _RANGE or value not in MEMORY_TYPES:
            raise InvalidFilter(f"type compares with one of {list(MEMORY_TYPES)}")
        return str(value)
    if name == "id" and (op in _RANGE or not isinstance(value, str)):
        raise InvalidFilter("id compares with memory ids (strings), by equality or $in")
    if name == "importance" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise InvalidFilter("importance compares with numbers")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidFilter(
                "filter strings must be valid Unicode (a lone surrogate is not a character)",
                details={"field": field.dotted},
            ) from None
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidFilter("integer out of 64-bit range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidFilter("numbers must be finite")
        return value
    raise InvalidFilter(
        f"filter values must be strings, numbers or booleans, not {type(value).__name__}",
        details={"field": field.dotted},
    )


def to_epoch_ms(value: Any) -> int:
    """An ISO 8601 time (naive means UTC) or epoch seconds, as epoch milliseconds."""
    if isinstance(value, bool):
        raise InvalidFilter("created_at compares with ISO 8601 times or epoch seconds")
    if isinstance(value, int | float) and math.isfinite(value):
        if not MIN_EPOCH_S <= value <= MAX_EPOCH_S:
            raise InvalidFilter("created_at: epoch seconds outside years 1 to 9999")
        return round(value * 1000)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return round(moment.astimezone(UTC).timestamp() * 1000)
        except (ValueError, OverflowError) as exc:
            raise InvalidFilter(
                f"created_at: not an ISO 8601 time in years 1 to 9999: {value!r}"
            ) from exc
    raise InvalidFilter("created_at compares with ISO 8601 times or epoch seconds")


MIN_EPOCH_S = datetime(1, 1, 2, tzinfo=UTC).timestamp()
MAX_EPOCH_S = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


# -- Milvus -------------------------------------------------------------------------------

PRESENCE_FIELD = "metadata_keys"


def to_milvus(node: Node) -> str:
    """Compile a tree to a Milvus boolean expression (no `not`, literals JSON-escaped)."""
    if isinstance(node, All):
        return _balanced([to_milvus(i) for i in node.items], "and")
    if isinstance(node, AnyOf):
        return _balanced([to_milvus(i) for i in node.items], "or")
    if isinstance(node, Exists):
        # `!=` also matches a missing key, which is how absence is expressed without `not`.
        key = milvus_literal(node.field.dotted)
        return f"{PRESENCE_FIELD}[{key}] {'==' if node.present else '!='} 1"
    target = node.field.path[0] if node.field.column else _metadata_ref(node.field)
    if node.op in ("$in", "$nin"):
        assert isinstance(node.value, tuple)
        values = ", ".join(milvus_literal(v) for v in node.value)
        return f"{target} {'in' if node.op == '$in' else 'not in'} [{values}]"
    return f"{target} {_MILVUS_OP[node.op]} {milvus_literal(node.value)}"


def _balanced(parts: list[str], op: str) -> str:
    """`(a) op (b) op ...` as a balanced tree: Milvus nests a chain one level per operand
    and fails beyond about 45 of them, while a balanced tree of 256 is 8 levels deep."""
    if len(parts) == 1:
        return f"({parts[0]})"
    middle = len(parts) // 2
    return f"({_balanced(parts[:middle], op)} {op} {_balanced(parts[middle:], op)})"


def _metadata_ref(field: Field) -> str:
    return "metadata" + "".join(f"[{milvus_literal(s)}]" for s in field.path)


def milvus_literal(value: Any) -> str:
    """A Milvus expression literal (Milvus strings use JSON escaping)."""
    return json.dumps(value, ensure_ascii=False)


def key_paths(
    metadata: dict[str, Any], prefix: str = "", depth: int = 0
) -> Iterator[tuple[str, Any]]:
    """Every key path of `metadata` (dotted, as filters name them, at most MAX_DEPTH deep)
    with its value."""
    for key, value in metadata.items():
        path = f"{prefix}{key}"
        yield path, value
        if isinstance(value, dict) and depth + 1 < MAX_DEPTH:
            yield from key_paths(value, f"{path}.", depth + 1)


def presence_map(metadata: dict[str, Any]) -> dict[str, int]:
    """Every key path present in `metadata` (dotted) -> 1, for `$exists` without `not`."""
    return {path: 1 for path, _ in key_paths(metadata)}


# -- SQL (Django ORM) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What a filter sees of one memory: its columns (created_at in epoch ms) and metadata."""

    columns: dict[str, Any]
    metadata: dict[str, Any]


def matches(node: Node, facts: Facts) -> bool:
    """Evaluate a tree on one memory in Python, with the semantics of the Milvus expression
    (used where metadata is sealed: the SQL fallback search)."""
    if isinstance(node, All):
        return all(matches(item, facts) for item in node.items)
    if isinstance(node, AnyOf):
        return any(matches(item, facts) for item in node.items)
    present, value = _lookup(node.field, facts)
    if isinstance(node, Exists):
        return present == node.present
    if node.op in ("$eq", "$ne"):
        equal = present and _equal(value, node.value)
        return equal if node.op == "$eq" else not equal
    if node.op in ("$in", "$nin"):
        assert isinstance(node.value, tuple)
        within = present and any(_equal(value, v) for v in node.value)
        return within if node.op == "$in" else not within
    if not present or not _number(value) or not _number(node.value):
        return False
    return bool(_COMPARE[node.op](value, node.value))


_COMPARE = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _lookup(field: Field, facts: Facts) -> tuple[bool, Any]:
    if field.column:
        return True, facts.columns[field.path[0]]
    here: Any = facts.metadata
    for segment in field.path:
        if not isinstance(here, dict) or segment not in here:
            return False, None
        here = here[segment]
    return True, here


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        return bool(a == b)
    return type(a) is type(b) and a == b
