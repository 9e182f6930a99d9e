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

DEFAULT_SHELL = "ssh -o BatchMode=yes -o ConnectTimeout=10 {node}"
HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")
# Stopping the stack without systemd knowing anything special: pacemakerd stops every
# resource here and exits; then corosync leaves the membership cleanly.
STOP_PACEMAKER = ["pacemakerd", "--shutdown"]
STOP_COROSYNC = ["corosync-cfgtool", "-H"]
POWEROFF = ["systemctl", "poweroff"]


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

    def run(self, node: str, command: list[str], timeout: float) -> str:
        argv = self.argv(node, command)
        try:
            done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=max(0.1, timeout))
        except FileNotFoundError:
            raise NodeCommandError(f"{argv[0]} is not installed") from None
        except subprocess.TimeoutExpired:
            raise NodeCommandError(f"{' '.join(command)} on {node} did not finish within {timeout:.0f}s") from None
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
