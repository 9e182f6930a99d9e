"""Agent logging with ocf-shellfuncs' rules, so our lines land where the shell agents' do.

- syslog when HA_LOGFACILITY is set (and not "none"), under the tag `AGENT(RESOURCE)[PID]`;
- HA_LOGFILE gets every non-debug line; HA_DEBUGLOG gets every line, debug included;
- with neither syslog nor a log file, lines go to stderr, which pacemaker-execd logs;
- debug lines only when HA_debug is true ("0" means off, unlike ocf.py).
Info is never dropped. Pacemaker exports the lower-case HA_logfacility/HA_logfile/HA_debugfile
spellings, which ocf-shellfuncs also honours.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Mapping, TextIO

from .ocf import is_true

_SYSLOG_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "crit": 2}


def _first(env: Mapping[str, str], *names: str) -> str:
    for name in names:
        if env.get(name):
            return env[name]
    return ""


class Log:
    def __init__(self, agent: str, resource: str, env: Mapping[str, str] | None = None,
                 stderr: TextIO | None = None) -> None:
        env = os.environ if env is None else env
        self.tag = f"{agent}({resource})[{os.getpid()}]".encode("utf-8", "backslashreplace").decode("utf-8")
        self.debug_enabled = is_true(_first(env, "HA_debug", "HA_DEBUG"))
        facility = _first(env, "HA_LOGFACILITY", "HA_logfacility").strip().lower()
        self._facility = None if facility in ("", "none") else facility
        self._logfile = _first(env, "HA_LOGFILE", "HA_logfile")
        self._debuglog = _first(env, "HA_DEBUGLOG", "HA_debugfile")
        self._stderr = stderr or sys.stderr
        self._syslog = None

    def debug(self, message: str) -> None:
        if self.debug_enabled:
            self._emit("debug", message)

    def info(self, message: str) -> None:
        self._emit("info", message)

    def warning(self, message: str) -> None:
        self._emit("warning", message)

    def error(self, message: str) -> None:
        self._emit("error", message)

    def _emit(self, level: str, message: str) -> None:
        # Parameters may carry undecodable bytes (surrogate escapes): logging must not raise.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        label = level.upper() if level != "warning" else "WARNING"
        line = f"{label}: {message}"
        if self._facility:
            self._to_syslog(level, line)
        stamp = time.strftime("%Y/%m/%d_%H:%M:%S")
        if self._logfile and level != "debug":
            self._append(self._logfile, f"{self.tag}:\t{stamp} {line}\n")
        if self._debuglog and self._debuglog != self._logfile:
            self._append(self._debuglog, f"{self.tag}:\t{stamp} {line}\n")
        elif self._debuglog and level == "debug":
            self._append(self._debuglog, f"{self.tag}:\t{stamp} {line}\n")
        if not self._facility and not self._logfile:
            self._stderr.write(f"{stamp} {self.tag} {line}\n")
            self._stderr.flush()

    def _to_syslog(self, level: str, line: str) -> None:
        import syslog  # only when configured: most monitors never pay for it

        if self._syslog is None:
            facility = getattr(syslog, "LOG_" + self._facility.upper(), syslog.LOG_DAEMON)
            syslog.openlog(self.tag, 0, facility)
            self._syslog = syslog
        self._syslog.syslog(_SYSLOG_PRIORITY[level], line)

    @staticmethod
    def _append(path: str, text: str) -> None:
        # O_NONBLOCK: a FIFO without a reader fails at once instead of hanging the action.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY
                         | os.O_CLOEXEC, 0o640)
        except OSError:
            return  # a missing log directory must never fail an action
        try:
            os.write(fd, text.encode("utf-8", "backslashreplace"))
        except OSError:
            pass
        finally:
            os.close(fd)
