"""The per-lab controller: owner of the nodes' namespaces, their power, and the lab switch.

It runs in its own network namespace, which holds the lab bridge (the "switch"); each node is
cabled to it by a veth.  Every node process descends from it, so it alone reaps them.  Requests
arrive on a unix socket (see protocol.py) from `ravada-lab` and from `fence_ravada_lab`.
Like a real NIC, a powered-off node answers Wake-on-LAN: the controller hears magic packets
on the switch (wakeonlan.py) and powers the node with that MAC on.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socketserver
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import procs, shaping, wakeonlan
from .errors import LabError
from .layout import (BRIDGE, SUBNET, SWITCH_ADDRESS, LabLayout, check_node_count,
                     check_remote_count)
from .node import Node, run
from .protocol import LAB_OPS, NODE_OPS


POWER_LOG_SIZE = 200
# Seconds between the off and the on of a reboot (see _node_op).
REBOOT_DELAY = 3.0


class Controller:
    def __init__(self, lab: LabLayout, count: int, link_rate: str | None = None,
                 remote_count: int = 0):
        self.lab = lab
        self.nodes = {n.name: Node(lab, n)
                      for n in lab.nodes(count) + lab.remote_nodes(remote_count)}
        self.link_rate: str | None = None  # as given (e.g. 200mbit); None: links unshaped
        self._set_rate(link_rate)
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # shutdown begun: no more boots
        self.stopped = threading.Event()  # every node off: the process may exit
        # Who switched which node off/on and when: the evidence that fencing really happened.
        self.power_log: list[dict] = []
        self._power_tickets: dict[str, object] = {}  # node -> its pending delayed boot

    def build_switch(self) -> None:
        run(["ip", "link", "set", "lo", "up"])
        run(["ip", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
        run(["ip", "link", "set", BRIDGE, "up"])
        run(["ip", "addr", "add", f"{SWITCH_ADDRESS}/{SUBNET.prefixlen}", "dev", BRIDGE])

    def wake_on_lan(self, mac: str, sender: str) -> None:
        """A magic packet seen on the switch: the powered-off node with this MAC boots."""
        node = next((n for n in self.nodes.values() if n.layout.mac == mac), None)
        if node is None or self.stopping.is_set():
            return
        with self.lock:
            if node.powered or self.stopping.is_set():
                return
            self._power_tickets.pop(node.layout.name, None)
            try:
                node.power_on()
                self.power_log.append({"node": node.layout.name, "op": "on", "at": time.time(),
                                       "client": f"wake-on-lan from {sender}"})
            except Exception as e:  # noqa: BLE001 - any cause is recorded for `status`
                print(f"controller: {node.layout.name} woken but did not boot: {e}",
                      file=sys.stderr, flush=True)
                self.power_log.append({"node": node.layout.name, "op": "boot-failed",
                                       "at": time.time(), "client": f"wake-on-lan from {sender}",
                                       "error": str(e)})
            del self.power_log[:-POWER_LOG_SIZE]
            self.save()

    def power_on_all(self) -> None:
        with self.lock, ThreadPoolExecutor(len(self.nodes)) as pool:
            for future in [pool.submit(n.power_on) for n in self.nodes.values()]:
                future.result()
            self.save()

    def handle(self, request: dict) -> dict:
        op = request.get("op")
        if op in LAB_OPS:
            if op == "boot":
                self.power_on_all()
            elif op == "shutdown":
                self.shutdown()
            elif op == "shape":
                with self.lock:
                    self.shape(request.get("rate"))
                    self.save()
            elif op == "state":
                with self.lock:
                    self.save()
            else:  # ping: must answer even while a boot holds the lock
                return {"controller": os.getpid()}
            return self.state()
        if op not in NODE_OPS:
            raise LabError(f"unknown operation {op!r}")
        name = request.get("node")
        node = self.nodes.get(name) if isinstance(name, str) else None
        if node is None:
            raise LabError(f"no node {name!r} in lab {self.lab.name!r}; "
                           f"nodes: {', '.join(self.nodes)}")
        if op == "exec":      # no lock: a long command must not hold the power switch
            return node.execute(request.get("argv"))
        with self.lock:
            if op in ("on", "off"):
                self._power_tickets.pop(node.layout.name, None)
            self._node_op(op, node)
            if op in ("on", "off", "reboot"):
                self.power_log.append({"node": node.layout.name, "op": op, "at": time.time(),
                                       "client": str(request.get("client", "?"))})
                del self.power_log[:-POWER_LOG_SIZE]
            self.save()
            return node.describe()

    def _node_op(self, op: str, node: Node) -> None:
        if op == "on":
            node.power_on()
        elif op == "off":
            node.power_off()
        elif op == "reboot":
            # Off is what makes the node safe: the fencing succeeds there.  The node boots a
            # little later, like a real machine after its POST: if its Pacemaker joined before
            # the cluster had heard of the fencing, it would take the news for its own death
            # ("We were allegedly just fenced") and stop for good.
            node.power_off()
            ticket = self._power_tickets[node.layout.name] = object()
            threading.Thread(target=self._boot_later, args=(node, ticket), daemon=True).start()
        elif op == "freeze":
            node.freeze()
        elif op == "thaw":
            node.thaw()
        elif op in ("cut", "heal"):
            node.set_cut(op == "cut")

    def _set_rate(self, rate: object) -> int | None:
        if rate is not None and not isinstance(rate, str):
            raise LabError("shape needs a rate string (e.g. 200mbit) or null")
        bits = None if rate is None else shaping.parse_rate(rate)
        for node in self.nodes.values():
            node.link_rate = bits
        self.link_rate = rate
        return bits

    def shape(self, rate: object) -> None:
        """Every node's cable limited to `rate` each way (None: unlimited), now and after
        every boot."""
        bits = self._set_rate(rate)
        for node in self.nodes.values():
            node.shape(bits)

    def _boot_later(self, node: Node, ticket: object) -> None:
        time.sleep(REBOOT_DELAY)
        with self.lock:
            # Any power operation since the reboot (a `kill`, an `on`) replaced its ticket.
            if self._power_tickets.get(node.layout.name) is not ticket or self.stopping.is_set():
                return
            try:
                node.power_on()
                self.power_log.append({"node": node.layout.name, "op": "on", "at": time.time(),
                                       "client": "reboot"})
            except Exception as e:  # noqa: BLE001 - any cause is recorded for `status`
                print(f"controller: {node.layout.name} fenced but did not boot: {e}",
                      file=sys.stderr, flush=True)
                self.power_log.append({"node": node.layout.name, "op": "boot-failed",
                                       "at": time.time(), "client": "reboot", "error": str(e)})
            self.save()

    def state(self) -> dict:
        return {
            "name": self.lab.name,
            "controller": os.getpid(),
            "switch_netns": procs.NamespaceIds.of(os.getpid()).net,
            "link_rate": self.link_rate,
            "nodes": {name: n.describe() for name, n in self.nodes.items()},
            "power_log": self.power_log,
        }

    def save(self) -> None:
        tmp = self.lab.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2))
        tmp.replace(self.lab.state_file)

    def shutdown(self) -> None:
        self.stopping.set()  # before the lock: no delayed reboot may boot a node any more
        with self.lock:
            for node in self.nodes.values():
                node.power_off()
            self.save()
        self.stopped.set()


class _Handler(socketserver.StreamRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        try:
            request = json.loads(self.rfile.readline() or b"{}")
            reply = {"ok": True, "data": self.server.controller.handle(request)}
        except LabError as e:
            reply = {"ok": False, "error": str(e)}
        except Exception as e:  # noqa: BLE001 - the client must get an answer, not a hang
            reply = {"ok": False, "error": f"controller error: {type(e).__name__}: {e}"}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, controller: Controller):
        self.controller = controller
        super().__init__(path, _Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ravada-lab controller (started by ravada-lab up)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--remote-nodes", type=int, default=0)
    parser.add_argument("--link-rate")
    args = parser.parse_args(argv)
    lab = LabLayout.for_lab(args.name, args.root)
    controller = Controller(lab, check_node_count(args.nodes), args.link_rate,
                            check_remote_count(args.remote_nodes))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=controller.shutdown).start())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.umask(0o077)
    try:
        controller.build_switch()
        controller.save()
        server = _Server(str(lab.control_socket), controller)
        wake = wakeonlan.Listener(BRIDGE, controller.wake_on_lan)
    except (LabError, OSError) as e:
        print(f"controller: {e}", file=sys.stderr)
        return 1
    wake.start()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"controller {os.getpid()} ready", flush=True)
    controller.stopped.wait()
    # Let the shutdown request's answer reach the client before the socket goes.
    time.sleep(0.2)
    wake.close()
    server.server_close()
    lab.control_socket.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
