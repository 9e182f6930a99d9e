"""Pacemaker's node rules (`<rule>` in `rsc_location`), evaluated per node as Pacemaker 2.1
does (lib/pengine/rules.c): the default comparison is a string one for eq/ne and a number
(integer, or decimal when a '.' appears) for lt/lte/gt/gte; strings compare without case;
numbers are read like strtoll/strtod (a numeric prefix; none at all falls back to strings);
versions compare component by component, missing ones as 0.

Only what a location rule can depend on is supported: node attribute expressions (with
`#uname`, `#id`, `#kind`), `and`/`or` and nested rules.  A date expression, a parameter
reference or a non-numeric version makes the rule `Unsupported`: the caller refuses a
mandatory rule it cannot read rather than guess.
"""
from __future__ import annotations

import math
import re

from lxml import etree

_INTEGER_PREFIX = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_NUMBER_PREFIX = re.compile(r"[ \t\n\v\f\r]*([+-]?(?:inf(?:inity)?|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)"
                            r"(?:[eE][+-]?[0-9]+)?))", re.IGNORECASE)
_INT64 = 2 ** 63
_VERSION_PART = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")


class Unsupported(Exception):
    """The rule uses something this evaluator does not implement."""


def matches(rule: etree._Element, attributes: dict[str, str]) -> bool:
    """Whether `rule` holds on a node with these attributes (#uname etc. included)."""
    results = []
    for child in rule:
        if not isinstance(child.tag, str):
            continue
        if child.tag == "expression":
            results.append(_expression(child, attributes))
        elif child.tag == "rule":
            results.append(matches(child, attributes))
        else:
            raise Unsupported(f"<{child.tag}> in rule {rule.get('id')}")
    if not results:
        return True
    if rule.get("boolean-op", "and") == "or":
        return any(results)
    return all(results)


def _expression(expr: etree._Element, attributes: dict[str, str]) -> bool:
    if expr.get("value-source", "literal") != "literal":
        raise Unsupported(f"value-source={expr.get('value-source')} in expression {expr.get('id')}")
    operation = expr.get("operation")
    actual = attributes.get(expr.get("attribute", ""))
    if operation == "defined":
        return actual is not None
    if operation == "not_defined":
        return actual is None
    if operation not in ("eq", "ne", "lt", "gt", "lte", "gte"):
        raise Unsupported(f"operation {operation!r} in expression {expr.get('id')}")
    expected = expr.get("value")
    cmp = _compare(actual, expected, expr.get("type"), operation)
    if operation == "eq":
        return cmp == 0
    if operation == "ne":
        return cmp != 0
    if actual is None or expected is None:
        return False
    return {"lt": cmp < 0, "lte": cmp <= 0, "gt": cmp > 0, "gte": cmp >= 0}[operation]


def _sign(difference: float) -> int:
    return (difference > 0) - (difference < 0)


def _compare(left: str | None, right: str | None, kind: str | None, operation: str) -> int:
    if left is None or right is None:
        return 0 if left is None and right is None else (1 if right is None else -1)
    if kind is None:
        if operation in ("lt", "lte", "gt", "gte"):
            kind = "number" if "." in left or "." in right else "integer"
        else:
            kind = "string"
    kind = kind.lower()
    if kind == "integer":
        numbers = _integer(left), _integer(right)
        if None not in numbers:
            return _sign(numbers[0] - numbers[1])
    elif kind == "number":
        numbers = _number(left), _number(right)
        if None not in numbers:
            return 0 if numbers[0] == numbers[1] else _sign(numbers[0] - numbers[1])
    elif kind == "version":
        return _compare_versions(left, right)
    # strcasecmp: ASCII letters without case, everything else byte by byte.
    a, b = left.encode("utf-8", "surrogateescape").lower(), right.encode("utf-8", "surrogateescape").lower()
    return (a > b) - (a < b)


def _integer(text: str) -> int | None:
    match = _INTEGER_PREFIX.match(text)
    if not match:
        return None
    value = int(match.group(1))
    return value if -_INT64 <= value < _INT64 else None


def _number(text: str) -> float | None:
    match = _NUMBER_PREFIX.match(text)
    if not match:
        return None
    value = float(match.group(1))
    return value if not math.isinf(value) or "inf" in match.group(1).lower() else None


def _compare_versions(left: str, right: str) -> int:
    def parts(text: str) -> list[int]:
        result = []
        for part in text.split("."):
            match = _VERSION_PART.match(part)
            if not match:
                raise Unsupported(f"version {text!r} is not numeric (Pacemaker itself cannot compare it)")
            result.append(int(match.group(0)))
        return result

    a, b = parts(left), parts(right)
    width = max(len(a), len(b))
    a, b = a + [0] * (width - len(a)), b + [0] * (width - len(b))
    return (a > b) - (a < b)
