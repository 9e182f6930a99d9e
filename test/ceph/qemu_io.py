"""A long-running qemu-io process = one VM's QEMU with an RBD image open through QEMU's own
block-rbd driver (librbd), inside a simulated node's network namespace."""
from __future__ import annotations

import os
import signal
import subprocess
import time

from ravada_lab.microceph import MicroCeph, Node


class QemuIO:
    def __init__(self, ceph: MicroCeph, node: Node, spec: str, user: str = "node") -> None:
        self.ceph, self.node, self.spec = ceph, node, spec
        drive = f"rbd:{spec}:id={user}:conf={ceph.conf}:keyring={ceph.keyring(user)}"
        # ip netns exec and stdbuf both exec: the PID is qemu-io's own
        self.proc = subprocess.Popen(node.argv("stdbuf", "-oL", "qemu-io", "-f", "raw", drive),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)

    @property
    def image(self) -> str:
        return self.spec.split("/", 1)[1]

    def my_watchers(self) -> list[str]:
        return [w for w in self.ceph.image_state(self.image)["watchers"]
                if w.startswith(self.node.ip + ":")]

    def wait_open(self, timeout: float = 20.0) -> str:
        """Wait until this QEMU watches the image; returns its client address."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu-io exited: {self.proc.stdout.read()}")
            mine = self.my_watchers()
            if mine:
                self.addr = mine[0]
                return self.addr
            time.sleep(0.05)
        raise TimeoutError(f"qemu-io on {self.node.name} did not open {self.spec}")

    def command(self, line: str, timeout: float = 30.0) -> str:
        """Run one qemu-io command; returns its first output line ('wrote ...', 'read ...' or
        the error).  Note: qemu-io blocks while librbd waits for the lock."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.proc.stdout.readline()
            if not text:
                break
            text = text.replace("qemu-io> ", "").strip()
            if not text:
                continue
            out.append(text)
            if "ops;" in text or "failed" in text.lower() or "error" in text.lower():
                break
        return " | ".join(out)

    def write(self, pattern: int, offset: int = 0, length: str = "4k") -> str:
        return self.command(f"write -P {pattern:#x} {offset} {length}")

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def cont(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def quit(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
