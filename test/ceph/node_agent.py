"""Drive node_start.py (the storage half of the VM agent) inside a simulated node."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ravada_lab.microceph import NODE_USER, MicroCeph
from ocf_ravada.rbd import CephSession, RbdDisk
from ocf_ravada.rbd import owner

SCRIPT = str(Path(__file__).with_name("node_start.py"))


class NodeAgent:
    """One 'VM start' on a node: the guard's decision, then its QEMU (qemu-io) until stop()."""

    def __init__(self, ceph: MicroCeph, node: str, spec: str, deadline: float = 30,
                 pattern: str | None = None) -> None:
        self.ceph, self.node, self.spec = ceph, node, spec
        argv = [sys.executable, SCRIPT, str(ceph.conf), str(ceph.keyring(NODE_USER)), node,
                ceph.node_map_text(), spec, str(deadline)] + ([pattern] if pattern else [])
        self.proc = subprocess.Popen(ceph.nodes[node].argv(*argv), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node_start on {node} died: {self.proc.stderr.read()}")
        self.result = json.loads(line)

    @property
    def allowed(self) -> bool:
        return self.result["allowed"]

    @property
    def qemu_pid(self) -> int:
        return self.result["qemu_pid"]

    def ask(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def write(self, pattern: int) -> str:
        return self.ask(f"write {pattern:#x}")["wrote"]

    def stop(self) -> str:
        """A clean stop: QEMU quits, then the guard's after_stop."""
        return self.ask("stop")["stopped"]

    def freeze(self) -> None:
        os.kill(self.qemu_pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.qemu_pid, signal.SIGCONT)

    def crash(self) -> None:
        """QEMU dies (SIGKILL) without any clean-up; the node keeps its owner record."""
        os.kill(self.qemu_pid, signal.SIGKILL)

    def close(self) -> None:
        if self.proc.poll() is None and self.result.get("qemu_pid"):
            try:
                os.kill(self.qemu_pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def record_of(admin: CephSession, spec: str) -> owner.OwnerRecord:
    return owner.load(admin, RbdDisk.from_spec(spec))
