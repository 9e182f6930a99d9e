"""OCF resource agent API: exit codes, the agent's environment and exit reasons.

Only the variables the OCF 1.1 spec and Pacemaker document are read here, so an agent
behaves the same under pacemaker-execd, crm_resource, pcs and ocf-tester.
"""
from __future__ import annotations

import enum
import os
import sys
from typing import Mapping, NoReturn


class Rc(enum.IntEnum):
    """OCF 1.1 exit codes."""

    SUCCESS = 0
    ERR_GENERIC = 1
    ERR_ARGS = 2
    ERR_UNIMPLEMENTED = 3
    ERR_PERM = 4
    ERR_INSTALLED = 5
    ERR_CONFIGURED = 6
    NOT_RUNNING = 7
    RUNNING_PROMOTED = 8
    FAILED_PROMOTED = 9
    DEGRADED = 190
    DEGRADED_PROMOTED = 191


class OcfError(Exception):
    """An action outcome other than success, with the reason Pacemaker should show."""

    def __init__(self, rc: Rc, reason: str) -> None:
        super().__init__(reason)
        self.rc = rc
        self.reason = reason


def is_true(value: str | None) -> bool:
    """The truth values ocf-shellfuncs' ocf_is_true accepts."""
    return (value or "").strip().lower() in ("1", "yes", "true", "on", "ja", "y")


class Environment:
    """The OCF view of the process environment (a mapping, for tests)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._env.get(name, default)

    def param(self, name: str) -> str | None:
        """Raw instance parameter `name`, None when unset."""
        return self._env.get("OCF_RESKEY_" + name)

    def meta(self, name: str) -> str | None:
        """Raw meta attribute (`OCF_RESKEY_CRM_meta_<name>`), None when unset."""
        return self._env.get("OCF_RESKEY_CRM_meta_" + name)

    @property
    def resource(self) -> str:
        return self._env.get("OCF_RESOURCE_INSTANCE", "") or "default"

    @property
    def interval_ms(self) -> int:
        try:
            return int(self.meta("interval") or 0)
        except ValueError:
            return 0

    @property
    def timeout_ms(self) -> int | None:
        """The operation timeout Pacemaker gave us, None when run by hand."""
        raw = self.meta("timeout")
        try:
            value = int(raw) if raw else None
        except ValueError:
            return None
        return value if value is not None and value > 0 else None

    def is_probe(self, action: str) -> bool:
        """A probe is a monitor with interval 0 (or none given)."""
        return action == "monitor" and self.interval_ms == 0

    def check_level(self) -> int:
        """OCF_CHECK_LEVEL rounded down to a level we know (0, 10, 20)."""
        try:
            level = int(self._env.get("OCF_CHECK_LEVEL") or 0)
        except ValueError:
            return 0
        for known in (20, 10, 0):
            if level >= known:
                return known
        return 0

    @property
    def rsc_tmp(self) -> str:
        """Per-boot scratch directory shared by agents (cleared at reboot)."""
        return self._env.get("HA_RSCTMP") or "/run/resource-agents"

    @property
    def exit_reason_prefix(self) -> str:
        return self._env.get("OCF_EXIT_REASON_PREFIX") or "ocf-exit-reason:"


def print_exit_reason(env: Environment, reason: str) -> None:
    """Tell Pacemaker why the action failed: it shows the last such stderr line."""
    one_line = " ".join(reason.split()).encode("utf-8", "backslashreplace").decode("utf-8")
    sys.stderr.write(f"{env.exit_reason_prefix}{one_line}\n")
    sys.stderr.flush()


def fail(rc: Rc, reason: str) -> NoReturn:
    raise OcfError(rc, reason)
