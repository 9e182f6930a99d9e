"""Commands run on a cluster node: locally when it is this node, else through a remote shell.

The shell is an argv template (no shell parsing of values), from $RAVADA_NODE_SHELL or
`ssh -o BatchMode=yes -o ConnectTimeout=10 {node}`; `{node}` is replaced by the node name,
which must be a host name.  The power-off command is a full argv template of its own
($RAVADA_NODE_POWEROFF, default: `systemctl poweroff` through the shell), since power may be
cut from outside (a BMC, a lab) rather than from the node itself.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass

from .deadline import Deadline

DEFAULT_SHELL = "ssh -o BatchMode=yes -o ConnectTimeout=10 {node}"
HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")
# Stopping the stack without systemd knowing anything special: pacemakerd stops every
# resource here and exits; then corosync leaves the membership cleanly.
STOP_PACEMAKER = ["pacemakerd", "--shutdown"]
STOP_COROSYNC = ["corosync-cfgtool", "-H"]
POWEROFF = ["systemctl", "poweroff"]
# `pacemakerd --shutdown` returns once pacemakerd has the request, before it has stopped; a
# corosync shutdown asked meanwhile is vetoed by pacemakerd although corosync-cfgtool -H exits
# 0.  So each step waits until its daemon is really gone: crmadmin exits 102
# (CRM_EX_NOT_CONNECTED) when no pacemakerd answers, corosync-cfgtool -s fails without corosync.
PACEMAKERD_STATE = ["crmadmin", "--pacemakerd", "--timeout", "5000"]
NO_PACEMAKERD = 102
COROSYNC_STATE = ["corosync-cfgtool", "-s"]
# ssh's own exit status for its failures: the node was not reached, nothing is known.
SHELL_FAILED = 255
POLL = 1.0


class NodeCommandError(Exception):
    pass


def _template(text: str, node: str) -> list[str]:
    return [part.replace("{node}", node) for part in shlex.split(text)]


@dataclass
class NodeShell:
    local_node: str
    shell: str = DEFAULT_SHELL
    poweroff: str | None = None

    @classmethod
    def from_environment(cls, local_node: str) -> "NodeShell":
        return cls(local_node, os.environ.get("RAVADA_NODE_SHELL") or DEFAULT_SHELL,
                   os.environ.get("RAVADA_NODE_POWEROFF") or None)

    def argv(self, node: str, command: list[str]) -> list[str]:
        if not HOST_NAME.match(node):
            raise NodeCommandError(f"not a host name: {node!r}")
        if node == self.local_node:
            return list(command)
        return _template(self.shell, node) + list(command)

    def _run(self, node: str, command: list[str], timeout: float) -> subprocess.CompletedProcess:
        argv = self.argv(node, command)
        try:
            return subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=max(0.1, timeout))
        except FileNotFoundError:
            raise NodeCommandError(f"{argv[0]} is not installed") from None
        except subprocess.TimeoutExpired:
            raise NodeCommandError(f"{' '.join(command)} on {node} did not finish within {timeout:.0f}s") from None

    def status(self, node: str, command: list[str], timeout: float) -> int:
        """The command's exit status (a remote shell that failed to reach the node is an error)."""
        done = self._run(node, command, timeout)
        if done.returncode == SHELL_FAILED and node != self.local_node:
            detail = " ".join(done.stderr.decode("utf-8", "replace").split())[:300]
            raise NodeCommandError(f"cannot reach {node}: {detail}")
        return done.returncode

    def stop_pacemaker(self, node: str, timeout: float) -> bool:
        """Stop Pacemaker on the node and wait until pacemakerd is gone; False when it was
        not running."""
        deadline = Deadline(timeout)
        if self.status(node, PACEMAKERD_STATE, deadline.bounded(10)) == NO_PACEMAKERD:
            return False
        try:
            self.run(node, STOP_PACEMAKER, deadline.remaining())
        except NodeCommandError:
            # Another invocation may have stopped it just now (NUT runs us on every node).
            if self.status(node, PACEMAKERD_STATE, deadline.bounded(10)) != NO_PACEMAKERD:
                raise
        while self.status(node, PACEMAKERD_STATE, deadline.bounded(10)) != NO_PACEMAKERD:
            if not deadline.pause(POLL):
                raise NodeCommandError(f"pacemakerd on {node} still runs {timeout:.0f}s after "
                                       "pacemakerd --shutdown")
        return True

    def stop_corosync(self, node: str, timeout: float) -> bool:
        """Stop corosync on the node (Pacemaker must be stopped) and wait until it is gone;
        False when it was not running."""
        deadline = Deadline(timeout)
        if self.status(node, COROSYNC_STATE, deadline.bounded(10)) != 0:
            return False
        while True:
            try:
                self.run(node, STOP_COROSYNC, deadline.remaining())
            except NodeCommandError:
                if self.status(node, COROSYNC_STATE, deadline.bounded(10)) == 0:
                    raise
            for _ in range(5):
                if self.status(node, COROSYNC_STATE, deadline.bounded(10)) != 0:
                    return True
                if not deadline.pause(POLL):
                    raise NodeCommandError(f"corosync on {node} still runs after corosync-cfgtool -H "
                                           "(a daemon vetoes its shutdown)")

    def run(self, node: str, command: list[str], timeout: float) -> str:
        done = self._run(node, command, timeout)
        if done.returncode:
            detail = " ".join(done.stderr.decode("utf-8", "replace").split())[:300]
            raise NodeCommandError(f"{' '.join(command)} on {node} failed (exit {done.returncode}): {detail}")
        return done.stdout.decode("utf-8", "replace")

    def power_off(self, node: str, timeout: float) -> None:
        if self.poweroff:
            if not HOST_NAME.match(node):
                raise NodeCommandError(f"not a host name: {node!r}")
            argv = _template(self.poweroff, node)
            try:
                done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=max(0.1, timeout))
            except (OSError, subprocess.TimeoutExpired) as err:
                raise NodeCommandError(f"power-off command for {node}: {err}") from None
            if done.returncode:
                raise NodeCommandError(f"power-off command for {node} failed (exit {done.returncode})")
            return
        self.run(node, POWEROFF, timeout)
