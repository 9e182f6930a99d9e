"""ravada_alert: a Pacemaker alert agent for node, fencing and resource events.

Pacemaker runs the agent (as hacluster, no arguments) with the event in CRM_alert_* variables
and the alert's instance attributes as variables of their own name:

    ravada_hooks_dir      directory of hook executables (default /etc/ravada/alert.d)
    ravada_hook_timeout   seconds each hook may run (default 20)

The agent logs one line per event to syslog (ident ravada_alert, facility daemon) and, when the
recipient is an absolute path, appends it to that file too.  Then it runs every hook in the
directory in parallel: argument 1 is the event kind, the environment is Pacemaker's plus
RAVADA_ALERT_SUMMARY (the logged line).  Each hook runs in its own process group; one that
outlives its timeout is killed with its whole group (SIGTERM, then SIGKILL), by the process
group id recorded at its start, so a hook that hangs never holds Pacemaker's alert up.  Hook
output goes to unlinked temporary files, never pipes: a hook that leaves a child holding its
output open cannot block the agent either.  A hook that fails or is killed is logged; the
agent then exits 1 (Pacemaker logs that), else 0.

A hook that wants something to outlive it must start it in a session of its own (setsid):
what stays in its process group is killed when it ends.

Hooks: regular executable files whose names are made of letters, digits, '_' and '-' (as
run-parts: editor backups and dpkg leftovers are skipped), not writable by group or others.
"""
from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import syslog
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Mapping

DEFAULT_HOOKS_DIR = "/etc/ravada/alert.d"
DEFAULT_HOOK_TIMEOUT = 20.0
# Pacemaker's default alert timeout is 30 s: hooks, their kill and the logging fit inside it.
MAX_HOOK_TIMEOUT = 25.0
KILL_GRACE = 1.0
HOOK_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
OUTPUT_LIMIT = 4096


def _value(env: Mapping[str, str], name: str, default: str = "?") -> str:
    value = env.get(f"CRM_alert_{name}", "")
    # One line, printable: these values end up in syslog and in a file.
    value = "".join(c if c.isprintable() else "?" for c in value)[:512]
    return value or default


def summary(env: Mapping[str, str]) -> str:
    """One line describing the event in `env` (Pacemaker's CRM_alert_* variables)."""
    kind = _value(env, "kind", "")
    node = _value(env, "node")
    if kind == "node":
        return f"node {node} (id {_value(env, 'nodeid')}) is now {_value(env, 'desc')}"
    if kind == "fencing":
        outcome = "succeeded" if _value(env, "rc") == "0" else f"failed (rc {_value(env, 'rc')})"
        return f"fencing ({_value(env, 'task')}) of {node} {outcome}: {_value(env, 'desc')}"
    if kind == "resource":
        task = _value(env, "task")
        interval = _value(env, "interval", "0")
        op = task if interval == "0" else f"{task} (every {interval} ms)"
        return (f"resource {_value(env, 'rsc')} {op} on {node}: {_value(env, 'desc')} "
                f"(rc {_value(env, 'rc')}, expected {_value(env, 'target_rc')}, "
                f"status {_value(env, 'status')}, {_value(env, 'exec_time', '0')} ms)")
    if kind == "attribute":
        return (f"attribute {_value(env, 'attribute_name')} on {node} = "
                f"{_value(env, 'attribute_value', '(unset)')}")
    return f"unknown alert kind {kind or '(none)'!r}"


@dataclass
class HookResult:
    hook: str
    pid: int
    returncode: int | None       # None: killed after its timeout
    output: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        if self.returncode is None:
            what = f"timed out after {self.seconds:.1f}s: killed (process group {self.pid})"
        elif self.returncode < 0:
            what = f"killed by signal {-self.returncode}"
        else:
            what = f"exit {self.returncode}"
        tail = " ".join(self.output.split())[-300:]
        return f"hook {self.hook} {what}{': ' + tail if tail and not self.ok else ''}"


def find_hooks(directory: str, log: Callable[[str], None]) -> list[str]:
    """The hook executables in `directory`, by name; a missing directory has none."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as err:
        log(f"cannot read hook directory {directory}: {err.strerror}")
        return []
    hooks = []
    for name in names:
        if not HOOK_NAME.match(name):
            continue
        path = os.path.join(directory, name)
        try:
            info = os.stat(path)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode) or not os.access(path, os.X_OK):
            continue
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            log(f"hook {path} is writable by group or others: not run")
            continue
        hooks.append(path)
    return hooks


def _kill_group(pgid: int) -> None:
    for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + grace
        while time.monotonic() < end:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def run_hooks(hooks: list[str], kind: str, env: Mapping[str, str], timeout: float) -> list[HookResult]:
    """Run the hooks in parallel, each in its own session; kill any still running after
    `timeout` seconds together with everything it started (its process group)."""
    started = []
    for hook in hooks:
        output = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen([hook, kind], stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                    env=dict(env), start_new_session=True, close_fds=True, cwd="/")
        except OSError as err:
            output.close()
            started.append((hook, None, None, time.monotonic(), str(err)))
            continue
        # start_new_session: the hook leads a new process group whose id is its PID.
        started.append((hook, proc, output, time.monotonic(), ""))
    end = time.monotonic() + timeout
    results = []
    for hook, proc, output, begun, error in started:
        if proc is None:
            results.append(HookResult(hook, 0, 127, error, 0.0))
            continue
        try:
            code: int | None = proc.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            code = None
        else:
            # The hook is done; anything it left behind in its group goes with it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        output.seek(0)
        text = output.read(OUTPUT_LIMIT).decode("utf-8", "replace")
        output.close()
        results.append(HookResult(hook, proc.pid, code, text, time.monotonic() - begun))
    return results


def _timeout(text: str | None, log: Callable[[str], None]) -> float:
    if not text:
        return DEFAULT_HOOK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value <= MAX_HOOK_TIMEOUT):
        log(f"ravada_hook_timeout={text!r} is not a number of seconds in (0, {MAX_HOOK_TIMEOUT:.0f}]: "
            f"using {min(DEFAULT_HOOK_TIMEOUT, MAX_HOOK_TIMEOUT):.0f}")
        return DEFAULT_HOOK_TIMEOUT
    return value


class Logger:
    """syslog, plus the recipient file when it names one."""

    def __init__(self, recipient: str | None) -> None:
        syslog.openlog("ravada_alert", syslog.LOG_PID, syslog.LOG_DAEMON)
        self.recipient = recipient if recipient and recipient.startswith("/") else None

    def __call__(self, line: str, priority: int = syslog.LOG_NOTICE) -> None:
        syslog.syslog(priority, line)
        if self.recipient:
            self._append(line)

    def _append(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            # Never block on a FIFO, never follow a planted symlink; append only to a file.
            fd = os.open(self.recipient, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        except OSError as err:
            syslog.syslog(syslog.LOG_WARNING, f"cannot write {self.recipient}: {err.strerror}")
            return
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.write(fd, f"{stamp} {line}\n".encode("utf-8", "replace"))
            else:
                syslog.syslog(syslog.LOG_WARNING, f"{self.recipient} is not a regular file: not written")
        finally:
            os.close(fd)


def main(environ: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if environ is None else environ)
    log = Logger(env.get("CRM_alert_recipient"))
    line = summary(env)
    log(line)
    warn = lambda text: log(text, syslog.LOG_WARNING)  # noqa: E731
    hooks = find_hooks(env.get("ravada_hooks_dir") or DEFAULT_HOOKS_DIR, warn)
    if not hooks:
        return 0
    timeout = _timeout(env.get("ravada_hook_timeout"), warn)
    results = run_hooks(hooks, env.get("CRM_alert_kind", "") or "unknown",
                        {**env, "RAVADA_ALERT_SUMMARY": line}, timeout)
    for result in results:
        if not result.ok:
            log(result.describe(), syslog.LOG_WARNING)
    return 0 if all(r.ok for r in results) else 1
