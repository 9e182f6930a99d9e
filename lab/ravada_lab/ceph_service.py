"""`ravada-lab up --ceph`: the lab's throw-away Ceph (ceph.py) in a process of its own, wired
into the cluster the way test/e2e/test_lab_rbd.py wires it.

The service process (`python3 -m ravada_lab.ceph_service`) starts the cluster, owns its daemons
for the lab's lifetime and removes them on SIGTERM; `ravada-lab down` sends it, by recorded
PID. Wiring: each node publishes its Ceph address (`ravada-rbd publish`, what fence_rbd's node
map reads) and holds the node user's key as a libvirt secret; `rbd-fence` (fence_rbd, with
unfencing) joins `lab-fence` in every node's fencing level 1, so a fenced node is powered off
AND cut off at the OSDs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ravada_lab

from .errors import LabError
from .layout import DEFAULT_ROOT, LabLayout
from .node import PYTHON
from .state import LabState, node_run

NODE_USER = "node"              # the VMs' cephx user (ravada_lab.microceph.NODE_USER)
FENCE_DEVICE = "rbd-fence"
POWER_DEVICE = "lab-fence"      # lifecycle.FENCE_DEVICE
NEEDED_COMMANDS = ("ceph-mon", "ceph-osd", "ceph-authtool", "monmaptool", "rbd", "ceph")
QEMU_RBD_DRIVER = Path("/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so")
START_TIMEOUT = 90.0
RBD_START_TIMEOUT = "120s"
STOP_TIMEOUT = 20.0


def service_file(lab: LabLayout) -> Path:
    return lab.root / "ceph-service.json"


def log_file(lab: LabLayout) -> Path:
    return lab.root / "ceph-service.log"


def has_ceph(lab: LabLayout) -> bool:
    return service_file(lab).exists()


def preflight() -> None:
    missing = [c for c in NEEDED_COMMANDS if shutil.which(c) is None]
    if missing:
        raise LabError(f"--ceph: missing commands: {', '.join(missing)} "
                       "(tools/install-deps installs deps/ceph.list)")
    if not QEMU_RBD_DRIVER.exists():
        raise LabError(f"--ceph: QEMU's RBD driver {QEMU_RBD_DRIVER} is missing "
                       "(package qemu-block-extra, deps/ceph.list)")
    try:
        import rados  # noqa: F401
        import rbd  # noqa: F401
    except ImportError:
        raise LabError("--ceph: python3-rados and python3-rbd are missing "
                       "(deps/ceph.list; run with /usr/bin/python3)") from None


def start(lab: LabLayout) -> None:
    """Start the service and wait until its cluster answers (or say why it did not)."""
    env = dict(os.environ, PYTHONPATH=str(Path(ravada_lab.__file__).resolve().parent.parent))
    with open(log_file(lab), "ab") as log:
        service = subprocess.Popen(
            [PYTHON, "-m", "ravada_lab.ceph_service", "--name", lab.name,
             "--root", str(lab.root.parent)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            cwd="/")
    service_file(lab).write_text(json.dumps({"pid": service.pid}))
    from .ceph import pids_file
    deadline = time.monotonic() + START_TIMEOUT
    while not pids_file(lab).exists():
        if service.poll() is not None or time.monotonic() > deadline:
            tail = log_file(lab).read_text(errors="replace").strip().splitlines()[-5:]
            raise LabError("the lab's Ceph did not start: " + " / ".join(tail))
        time.sleep(0.1)


def stop(lab: LabLayout) -> None:
    """End the service (it removes its daemons), then kill whatever it left behind."""
    try:
        pid = json.loads(service_file(lab).read_text())["pid"]
    except FileNotFoundError:
        return
    if _is_service(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _is_service(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_service(pid):
            os.kill(pid, signal.SIGKILL)
    from .ceph import stop_recorded
    stop_recorded(lab)
    service_file(lab).unlink()


def _is_service(pid: int) -> bool:
    """`pid` is still our service (not a reused PID after a host reboot), and not a zombie."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"ravada_lab.ceph_service" in argv and status != "Z"


def attach(state: LabState, progress=print) -> None:
    """Publish every node's Ceph address, give it the key as a libvirt secret, and add
    fence_rbd to the fencing topology."""
    from .ceph import FENCE_USER, LabCeph, define_ceph_secret
    ceph = LabCeph(state.lab)
    for node in state.node_names:
        node_run(state, node, ["ravada-rbd", *client_args(state.lab), "publish"])
        define_ceph_secret(state, node, ceph)
    first = state.node_names[0]
    node_run(state, first, ["pcs", "stonith", "create", FENCE_DEVICE, "fence_rbd",
                            f"ceph_conf={ceph.conf}", f"ceph_id={FENCE_USER}",
                            f"keyring={ceph.keyring(FENCE_USER)}",
                            f"pcmk_host_list={' '.join(state.node_names)}",
                            "pcmk_reboot_action=off", "meta", "provides=unfencing"])
    for node in state.node_names:
        node_run(state, first, ["pcs", "stonith", "level", "add", "1", node,
                                f"{POWER_DEVICE},{FENCE_DEVICE}"])
    progress(f"Ceph on the lab switch ({ceph.cluster.mon_ip}), {FENCE_DEVICE} with "
             f"{POWER_DEVICE} in every node's fencing level 1")


def client_args(lab: LabLayout, user: str = NODE_USER) -> list[str]:
    """--conf/--id/--keyring of a Ceph client of the lab's cluster (ravada-rbd, rbd, ceph)."""
    return ["--conf", str(conf_path(lab)), "--id", user, "--keyring", str(keyring_path(lab, user))]


def vm_params(lab: LabLayout) -> tuple[str, ...]:
    """The VM agent's parameters for RBD disks: the guard's Ceph client, and a start timeout
    with room to wait out a dead client's watch (10 s in the lab)."""
    return (f"ceph_conf={conf_path(lab)}", f"ceph_id={NODE_USER}",
            f"ceph_keyring={keyring_path(lab, NODE_USER)}", "op", "start",
            f"timeout={RBD_START_TIMEOUT}")


def conf_path(lab: LabLayout) -> Path:
    from .ceph import ceph_dir
    from .microceph import MicroCeph
    return MicroCeph(ceph_dir(lab)).conf


def keyring_path(lab: LabLayout, user: str) -> Path:
    from .ceph import ceph_dir
    from .microceph import MicroCeph
    return MicroCeph(ceph_dir(lab)).keyring(user)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the lab's Ceph (started by ravada-lab up --ceph)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    args = parser.parse_args(argv)
    from .ceph import LabCeph
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ceph = LabCeph(LabLayout.for_lab(args.name, args.root)).start()
    except Exception as e:  # noqa: BLE001 - start() cleaned up; the log tells `up` why
        print(f"ceph: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"ceph service {os.getpid()} ready: mon {ceph.cluster.mon_ip}", flush=True)
    try:
        stopping.wait()
    finally:
        ceph.stop()
    print("ceph service stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
