#!/usr/bin/python3
"""What the VM agent does on `start` and `stop`, reduced to the storage part, run inside a
simulated node: guard.before_start -> (if allowed) QEMU (qemu-io) opens the image -> optional
first write -> guard.after_start (records QEMU's address).  Prints one JSON line with the
decision, then serves commands on stdin, one JSON line of answer each:

    write 0xNN      QEMU writes 4 KiB of that byte at offset 0 (answers its output line)
    stop            QEMU quits, then guard.after_stop (a clean stop)
    (end of input)  QEMU quits, nothing else (the test lets go)

    node_start.py CONF KEYRING NODE NODE_MAP POOL/IMAGE DEADLINE_S [PATTERN]
"""
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lib"))

from ocf_ravada.deadline import Deadline  # noqa: E402
from ocf_ravada.rbd import NodeMap, Policy, RbdDisk, RbdGuard  # noqa: E402


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def main() -> int:
    conf, keyring, node, node_map, spec, seconds = sys.argv[1:7]
    pattern = sys.argv[7] if len(sys.argv) > 7 else None
    disk = RbdDisk.from_spec(spec)

    def guard() -> RbdGuard:
        return RbdGuard.open(conf, "node", keyring, timeout=5, policy=Policy.RECOVER,
                             node_map=NodeMap.parse(node_map), local_node=node, reserve=1.0,
                             log=lambda line: print(line, file=sys.stderr, flush=True))

    qemu = None
    with guard() as g:
        result = g.before_start([disk], Deadline(float(seconds)))
        wrote = ""
        if result.allowed:
            drive = f"rbd:{spec}:id=node:conf={conf}:keyring={keyring}"
            qemu = subprocess.Popen(["stdbuf", "-oL", "qemu-io", "-f", "raw", drive],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            if pattern:
                wrote = command(qemu, f"write -P {pattern} 0 4k")
            g.after_start([disk])
        say(node=node, allowed=result.allowed, reason=result.reason, actions=result.actions,
            wrote=wrote, qemu_pid=qemu.pid if qemu else None, t=time.time())
    for line in sys.stdin:
        word, *args = line.split()
        if word == "write" and qemu:
            say(wrote=command(qemu, f"write -P {args[0]} 0 4k"))
        elif word == "stop" and qemu:
            quit_qemu(qemu)
            qemu = None
            with guard() as g:
                say(stopped=g.after_stop([disk], Deadline(10)).reason)
        else:
            say(error=f"cannot {line.strip()!r} now")
    if qemu:
        quit_qemu(qemu)
    return 0


def command(qemu: subprocess.Popen, line: str) -> str:
    """One qemu-io command; its output lines joined ('wrote ... | 4 KiB, 1 ops; ...')."""
    qemu.stdin.write(line + "\n")
    qemu.stdin.flush()
    lines = []
    while True:
        out = qemu.stdout.readline()
        if not out:
            return " | ".join(lines + ["qemu-io exited"])
        out = out.replace("qemu-io> ", "").strip()
        if out:
            lines.append(out)
        if "ops;" in out or "failed" in out.lower() or "error" in out.lower():
            return " | ".join(lines)


def quit_qemu(qemu: subprocess.Popen) -> None:
    try:
        qemu.stdin.write("quit\n")
        qemu.stdin.flush()
    except BrokenPipeError:
        pass                    # crashed (killed) by the test
    qemu.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
