"""Pacemaker's node rules (`<rule>` in `rsc_location`), evaluated per node.

Only what a location rule can depend on is supported: node attribute expressions (with
`#uname`, `#id`, `#kind`), `and`/`or` and nested rules.  A date expression or a parameter
reference makes the rule `Unsupported`: the caller refuses a mandatory rule it cannot read
rather than guess.
"""
from __future__ import annotations

from lxml import etree


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


def _number(text: str, kind: str) -> float | tuple[int, ...]:
    if kind == "version":
        return tuple(int(part) for part in text.strip().split(".") if part.isdigit())
    return float(text) if kind == "number" else int(text)


def _expression(expr: etree._Element, attributes: dict[str, str]) -> bool:
    if expr.get("value-source", "literal") != "literal":
        raise Unsupported(f"value-source={expr.get('value-source')} in expression {expr.get('id')}")
    operation = expr.get("operation")
    actual = attributes.get(expr.get("attribute", ""))
    if operation == "defined":
        return actual is not None
    if operation == "not_defined":
        return actual is None
    expected = expr.get("value")
    if operation not in ("eq", "ne", "lt", "gt", "lte", "gte") or expected is None:
        raise Unsupported(f"operation {operation!r} in expression {expr.get('id')}")
    if actual is None:
        return operation == "ne"
    kind = expr.get("type")
    if kind is None:
        # Pacemaker compares as numbers when both sides look like numbers.
        kind = "number" if _looks_numeric(actual) and _looks_numeric(expected) else "string"
    if kind in ("integer", "number", "version"):
        try:
            left, right = _number(actual, kind), _number(expected, kind)
        except (ValueError, OverflowError):
            left, right = actual, expected
    else:
        left, right = actual, expected
    if isinstance(left, str) != isinstance(right, str):
        left, right = str(left), str(right)
    return {"eq": left == right, "ne": left != right, "lt": left < right, "gt": left > right,
            "lte": left <= right, "gte": left >= right}[operation]


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
