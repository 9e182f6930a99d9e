"""Typed agent parameters: one declaration drives metadata, parsing and validation.

Values arrive as `OCF_RESKEY_<name>` strings; an empty string means "unset" (pcs and crm
pass empty values for cleared parameters), so the default applies.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from .ocf import Environment, OcfError, Rc

TRUE_WORDS = frozenset({"1", "yes", "true", "on", "ja", "y"})
FALSE_WORDS = frozenset({"0", "no", "false", "off", "nein", "n"})
# ASCII digits only: int() would also take "1_000", "٣" and surrounding whitespace.
INTEGER = re.compile(r"[+-]?[0-9]{1,40}")
# Integers without a declared maximum still end up in C ints (libvirt, timeouts).
INTEGER_LIMIT = 2 ** 31 - 1


def finite_number(text: str) -> float | None:
    """The value of a decimal number such as 1, 0.5 or 4e2; None for anything else,
    including inf, nan and numbers too large to be a float."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class Deprecation(NamedTuple):
    """OCF 1.1 <deprecated>: the parameter still works, the admin is told what replaces it."""

    desc: str
    replaced_with: tuple[str, ...] = ()


class Parameter(NamedTuple):
    name: str
    shortdesc: str
    longdesc: str
    type: str = "string"  # string | integer | boolean | select
    default: Any = None
    required: bool = False
    unique_group: str | None = None
    reloadable: bool = False
    options: tuple[str, ...] = ()  # for select
    minimum: int | None = None  # for integer
    maximum: int | None = None
    deprecated: Deprecation | None = None
    # Extra check on the parsed value; returns an error message or None.
    check: Callable[[Any], str | None] | None = None

    def default_text(self) -> str | None:
        """The default as the metadata shows it."""
        if self.default is None:
            return None
        if self.type == "boolean":
            return "true" if self.default else "false"
        return str(self.default)

    def parse(self, raw: str | None) -> Any:
        """The typed value of `raw`; raises OcfError(ERR_CONFIGURED) when it is invalid."""
        if raw is None or raw == "":
            if self.required:
                raise OcfError(Rc.ERR_CONFIGURED, f"required parameter '{self.name}' is not set")
            return self.default
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            # Undecodable bytes in the environment (surrogate escapes): libvirt and the
            # Pacemaker tools would fail on them later, with a traceback.
            raise self._invalid(raw, "not valid UTF-8 text") from None
        value: Any
        if self.type == "boolean":
            word = raw.strip().lower()
            if word in TRUE_WORDS:
                value = True
            elif word in FALSE_WORDS:
                value = False
            else:
                raise self._invalid(raw, "expected a boolean (true/false, yes/no, 1/0)")
        elif self.type == "integer":
            if not INTEGER.fullmatch(raw.strip()):
                raise self._invalid(raw, "expected a whole number")
            value = int(raw.strip(), 10)
            if self.minimum is not None and value < self.minimum:
                raise self._invalid(raw, f"must be at least {self.minimum}")
            maximum = self.maximum if self.maximum is not None else INTEGER_LIMIT
            if value > maximum or value < -INTEGER_LIMIT:
                raise self._invalid(raw, f"must be at most {maximum}")
        elif self.type == "select":
            if raw not in self.options:
                raise self._invalid(raw, "expected one of " + ", ".join(self.options))
            value = raw
        else:
            value = raw
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise self._invalid(raw, problem)
        return value

    def _invalid(self, raw: str, why: str) -> OcfError:
        shown = raw if len(raw) <= 60 else raw[:57] + "..."
        return OcfError(Rc.ERR_CONFIGURED, f"invalid value '{shown}' for parameter '{self.name}': {why}")


class Values(Mapping[str, Any]):
    """Parsed parameter values, by name; `given` tells which the admin set explicitly."""

    def __init__(self, values: dict[str, Any], given: frozenset[str]) -> None:
        self._values = values
        self.given = given

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def parse_all(parameters: Iterable[Parameter], env: Environment) -> Values:
    """Parse every declared parameter; the first invalid one raises OcfError."""
    values: dict[str, Any] = {}
    given = set()
    for param in parameters:
        raw = env.param(param.name)
        if raw not in (None, ""):
            given.add(param.name)
        values[param.name] = param.parse(raw)
    return Values(values, frozenset(given))


def parse_lenient(parameters: Iterable[Parameter], env: Environment) -> tuple[Values, list[OcfError]]:
    """Like parse_all, but invalid values fall back to the default and are returned as errors.

    Stop and probes use this: they must still find and stop a running VM whose resource
    definition was edited into something invalid.
    """
    values: dict[str, Any] = {}
    given = set()
    errors: list[OcfError] = []
    for param in parameters:
        raw = env.param(param.name)
        try:
            values[param.name] = param.parse(raw)
            if raw not in (None, ""):
                given.add(param.name)
        except OcfError as err:
            errors.append(err)
            values[param.name] = param.default
    return Values(values, frozenset(given)), errors


def by_name(parameters: Iterable[Parameter]) -> Mapping[str, Parameter]:
    return {p.name: p for p in parameters}
