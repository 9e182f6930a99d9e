"""fence_ravada_lab: a fence agent for lab nodes, following fence-agents' conventions.

Pacemaker's fencer runs it with no arguments and `key=value` lines on stdin (action, port or
plug, and the device's parameters); admins run it with options (`-o off -n node2`).  It asks
the lab controller — the lab's power switch — to power the node off (every process killed at
once), on (namespaces rebuilt, daemons started) or both.
"""

from __future__ import annotations

from pathlib import Path

from ocf_ravada import fenceagent
from ocf_ravada.fenceagent import EXIT_OFF, EXIT_OK, Option
from .errors import LabError
from .layout import DEFAULT_NAME, DEFAULT_ROOT, LabLayout
from .protocol import request

AGENT = fenceagent.FenceAgent(
    name="fence_ravada_lab",
    shortdesc="Fence agent for ravada-lab nodes (power switch of the lab)",
    longdesc=("Powers ravada-lab nodes off (every process of the node killed at once, like a power "
              "cut) and on (namespaces rebuilt, cluster and libvirt daemons started) through the "
              "lab controller's socket."),
    options=(
        Option("lab", "Name of the lab (as given to ravada-lab up --name)", DEFAULT_NAME),
        Option("lab_root", "Directory holding the labs' state", str(DEFAULT_ROOT)),
    ),
    default_action="reboot",
    plug_desc="Lab node to fence (node1, node2, ..., remote1, ...)",
    automatic_on=False,
)
POWER_TIMEOUT = 120.0


def run(action: str, options: dict[str, str]) -> int:
    lab = LabLayout.for_lab(fenceagent.option(AGENT, options, "lab"),
                            Path(fenceagent.option(AGENT, options, "lab_root")))
    if action == "validate-all":
        return EXIT_OK
    if action == "monitor":
        request(lab.control_socket, "ping", timeout=10)
        return EXIT_OK
    if action == "list":
        state = request(lab.control_socket, "state", timeout=10)
        print("\n".join(f"{name}," for name in state["nodes"]))
        return EXIT_OK
    node = fenceagent.target_of(options, action)
    answer = request(lab.control_socket, action, node=node, timeout=POWER_TIMEOUT, client=AGENT.name)
    if action == "status":
        print(f"Status: {answer['power'].upper()}")
        return EXIT_OK if answer["power"] == "on" else EXIT_OFF
    print(f"Success: {node} {action}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return fenceagent.main(AGENT, run, (LabError,), argv)
