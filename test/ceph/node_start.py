#!/usr/bin/python3
"""What the VM agent does on `start`, reduced to the storage part, run inside a simulated node:
guard.before_start -> (if allowed) QEMU opens the image and writes -> guard.after_start.
Prints one JSON line with the decision, then keeps QEMU running until stdin closes.

    node_start.py CONF KEYRING NODE NODE_MAP POOL/IMAGE DEADLINE_S PATTERN
"""
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lib"))

from ocf_ravada.deadline import Deadline  # noqa: E402
from ocf_ravada.rbd import NodeMap, Policy, RbdDisk, RbdGuard  # noqa: E402


def main() -> int:
    conf, keyring, node, node_map, spec, seconds, pattern = sys.argv[1:8]
    deadline = Deadline(float(seconds))
    disk = RbdDisk.from_spec(spec)
    with RbdGuard.open(conf, "node", keyring, timeout=5, policy=Policy.RECOVER,
                       node_map=NodeMap.parse(node_map), local_node=node, reserve=1.0) as guard:
        result = guard.before_start([disk], deadline)
        qemu = None
        if result.allowed:
            drive = f"rbd:{spec}:id=node:conf={conf}:keyring={keyring}"
            qemu = subprocess.Popen(["stdbuf", "-oL", "qemu-io", "-f", "raw", drive],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            qemu.stdin.write(f"write -P {pattern} 0 4k\n")
            qemu.stdin.flush()
            wrote = qemu.stdout.readline().strip()
            guard.after_start([disk])
        else:
            wrote = ""
        print(json.dumps({"node": node, "allowed": result.allowed, "reason": result.reason,
                          "wrote": wrote, "t": time.time()}), flush=True)
    sys.stdin.read()                  # hold the "VM" until the test lets go
    if qemu:
        qemu.stdin.write("quit\n")
        qemu.stdin.flush()
        qemu.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
