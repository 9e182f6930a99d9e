"""Deeper monitor checks: the guest agent (level 10) and admin scripts (level 20)."""
from __future__ import annotations

import json
import os
import subprocess

import libvirt

from ..deadline import Deadline
from ..ocf import OcfError, Rc
from ..virt.connection import Hypervisor, VirtError


def guest_agent_ping(hv: Hypervisor, dom: libvirt.virDomain, name: str, deadline: Deadline) -> bool:
    """Ping qemu-guest-agent; False when the guest has no agent channel (nothing to check)."""
    import libvirt_qemu
    from ..virt import domxml

    xml = hv.call(f"reading the definition of {name}", dom.XMLDesc, 0, limit=5)
    if not domxml.parse(xml).has_guest_agent:
        return False
    timeout = max(1, int(deadline.bounded(5)))
    try:
        reply = hv.call(f"pinging the guest agent of {name}", libvirt_qemu.qemuAgentCommand,
                        dom, json.dumps({"execute": "guest-ping"}), timeout, 0, limit=timeout + 1)
    except VirtError as err:
        raise OcfError(Rc.ERR_GENERIC, f"guest agent of {name} does not answer: {err.reason}") from None
    if not ping_answered(reply):
        raise OcfError(Rc.ERR_GENERIC, f"guest agent of {name} gave an unexpected answer: {reply!r:.80}")
    return True


def ping_answered(reply: str | None) -> bool:
    """The reply comes from inside the guest: only a JSON object with "return" counts."""
    try:
        answer = json.loads(reply or "{}")
    except (ValueError, RecursionError):
        return False
    return isinstance(answer, dict) and "return" in answer


def run_scripts(scripts: str, name: str, per_script: int, deadline: Deadline) -> None:
    """Run each monitor script; the first failure fails the check with its output."""
    env = dict(os.environ, DOMAIN_NAME=name)
    for script in scripts.split():
        timeout = deadline.bounded(per_script)
        try:
            done = subprocess.run([script], capture_output=True, encoding="utf-8", errors="replace",
                                  timeout=max(0.1, timeout), env=env, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise OcfError(Rc.ERR_GENERIC, f"monitor script {script} not found") from None
        except PermissionError:
            raise OcfError(Rc.ERR_GENERIC, f"monitor script {script} is not executable") from None
        except subprocess.TimeoutExpired:
            raise OcfError(Rc.ERR_GENERIC, f"monitor script {script} did not finish within {timeout:.0f}s") from None
        except OSError as err:
            raise OcfError(Rc.ERR_GENERIC, f"monitor script {script} cannot be run: {err.strerror}") from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip().splitlines()
            detail = f": {output[-1]}" if output else ""
            raise OcfError(Rc.ERR_GENERIC, f"monitor script {script} failed with exit {done.returncode}{detail}")
