"""The process that holds a lab node's namespaces open: PID 1 of the node.

Started by `unshare` already inside the node's new namespaces, it mounts the node's private
directories over the host's, names the node, brings up loopback, reports "ready" on stdout and
then only reaps orphans.  When it dies, the kernel kills every process of the node at once —
that is a power cut.  Run as a script (no ocf_ravada import): the spec is JSON in argv[1].
"""

import json
import os
import socket
import subprocess
import sys
import time


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def setup(spec: dict) -> None:
    socket.sethostname(spec["hostname"])
    # /run and /dev/shm are private and empty, like after boot.
    mount("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs", "/run")
    os.makedirs("/run/lock", mode=0o1777, exist_ok=True)
    for directory in spec.get("run_dirs", []):
        os.makedirs(directory, mode=0o755, exist_ok=True)
    mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", "/dev/shm")
    for source, target in spec["binds"]:
        mount("--bind", source, target)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def reap_forever() -> None:
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(0.5)


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    try:
        setup(spec)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"failed: {e}", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    reap_forever()


if __name__ == "__main__":
    main()
