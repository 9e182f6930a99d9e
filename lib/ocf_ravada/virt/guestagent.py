"""Guest file-system freeze and thaw through the QEMU guest agent, via libvirt.

libvirt's fsFreeze/fsThaw take the domain's agent job: while a freeze hangs in the guest (a
slow fsfreeze hook, a stuck file system) a thaw waits for that job.  So a thaw is retried until
the caller's deadline, and `frozen()` (guest-fsfreeze-status) lets a later run find a guest
that was left frozen by an interrupted one.
"""
from __future__ import annotations

import json
from enum import Enum

import libvirt
import libvirt_qemu
from .. import safexml
from ..deadline import Deadline
from .connection import Hypervisor, LibvirtBusy, LibvirtFailed, LibvirtUnavailable

AGENT_CHANNEL = "org.qemu.guest_agent.0"
# One agent command normally answers in milliseconds; the freeze itself may take longer
# (the guest flushes dirty data first).
STATUS_LIMIT = 5.0


class Agent(Enum):
    ABSENT = "no guest agent channel"
    DISCONNECTED = "guest agent not running in the guest"
    CONNECTED = "guest agent connected"


def agent_state(domain_xml: str | bytes) -> Agent:
    """What the live domain XML says about the guest agent's virtio-serial channel."""
    root = safexml.parse(domain_xml, "domain XML")
    for target in root.iterfind("devices/channel/target"):
        if target.get("name") == AGENT_CHANNEL:
            return Agent.CONNECTED if target.get("state") == "connected" else Agent.DISCONNECTED
    return Agent.ABSENT


class GuestAgent:
    """Freeze/thaw/status of one running domain's file systems, each call bounded."""

    def __init__(self, hv: Hypervisor, domain: libvirt.virDomain) -> None:
        self.hv = hv
        self.domain = domain
        self.name = domain.name()

    def state(self) -> Agent:
        xml = self.hv.call(f"reading the live XML of {self.name}", self.domain.XMLDesc, 0)
        try:
            return agent_state(xml)
        except safexml.UnsafeXml as err:
            raise LibvirtFailed(f"the live XML of {self.name} is unusable: {err}") from None

    def frozen(self) -> bool:
        """guest-fsfreeze-status: True when the guest's file systems are frozen."""
        command = json.dumps({"execute": "guest-fsfreeze-status"})
        reply = self.hv.call(f"asking {self.name}'s guest agent whether it is frozen",
                             libvirt_qemu.qemuAgentCommand, self.domain, command,
                             int(max(1, self.hv.deadline.bounded(STATUS_LIMIT))), 0,
                             limit=STATUS_LIMIT + 1)
        try:
            return json.loads(reply)["return"] == "frozen"
        except (ValueError, KeyError, TypeError):
            raise LibvirtFailed(f"{self.name}'s guest agent gave an unreadable fsfreeze status") from None

    def freeze(self, limit: float) -> int:
        """Freeze every guest file system; the number frozen.  Waits at most `limit` seconds:
        a timeout is a LibvirtUnavailable ('... hung'), and the caller must thaw."""
        return self.hv.call(f"freezing {self.name}'s file systems", self.domain.fsFreeze, None, 0,
                            limit=limit)

    def thaw(self, deadline: Deadline) -> int:
        """Thaw; the number of file systems thawed.  While a freeze is still running in the guest
        libvirt holds the agent job and the thaw waits for it: it is retried (libvirt busy, or
        our own per-call limit passed) until `deadline`, then the last error is raised."""
        while True:
            try:
                return self.hv.call(f"thawing {self.name}'s file systems", self.domain.fsThaw, None, 0,
                                    limit=max(0.1, deadline.remaining()))
            except (LibvirtBusy, LibvirtUnavailable):
                if deadline.remaining() < 1.0:
                    raise
                deadline.pause(0.5)
