"""fence_ravada_lab: a fence agent for lab nodes, following fence-agents' conventions.

Pacemaker's fencer runs it with no arguments and `key=value` lines on stdin (action, port or
plug, and the device's parameters); admins run it with options (`-o off -n node2`).  It asks
the lab controller — the lab's power switch — to power the node off (every process killed at
once), on (namespaces rebuilt, daemons started) or both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lxml import etree

from .errors import LabError
from .layout import DEFAULT_NAME, DEFAULT_ROOT, LabLayout
from .protocol import request

AGENT = "fence_ravada_lab"
ACTIONS = ("on", "off", "reboot", "status", "list", "monitor", "metadata", "validate-all")
EXIT_OK, EXIT_FAIL, EXIT_OFF = 0, 1, 2
# key on stdin -> (description, default); port is the deprecated spelling of plug.
PARAMETERS = {
    "action": ("Fencing action", "reboot"),
    "plug": ("Lab node to fence (node1, node2, ...)", None),
    "port": ("Lab node to fence (deprecated: use plug)", None),
    "lab": ("Name of the lab (as given to ravada-lab up --name)", DEFAULT_NAME),
    "lab_root": ("Directory holding the labs' state", str(DEFAULT_ROOT)),
}
# Keys Pacemaker or admins may add that mean nothing to this device.
IGNORED = ("nodename", "verbose", "debug", "separator")
POWER_TIMEOUT = 120.0


def metadata() -> bytes:
    agent = etree.Element("resource-agent", name=AGENT,
                          shortdesc="Fence agent for ravada-lab nodes (power switch of the lab)")
    etree.SubElement(agent, "longdesc").text = (
        "Powers ravada-lab nodes off (every process of the node killed at once, like a power "
        "cut) and on (namespaces rebuilt, cluster and libvirt daemons started) through the "
        "lab controller's socket.")
    etree.SubElement(agent, "vendor-url").text = "https://github.com/ravada/ocf-ravada"
    params = etree.SubElement(agent, "parameters")
    for name, (desc, default) in PARAMETERS.items():
        attrs = {"name": name, "unique": "0", "required": "0"}
        if name == "plug":
            attrs["obsoletes"] = "port"
        if name == "port":
            attrs["deprecated"] = "1"
        param = etree.SubElement(params, "parameter", attrs)
        getopt = {"action": "-o, --action=[action]", "plug": "-n, --plug=[node]"}.get(
            name, f"--{name.replace('_', '-')}=[value]")
        etree.SubElement(param, "getopt", mixed=getopt)
        content = etree.SubElement(param, "content", type="string")
        if default is not None:
            content.set("default", default)
        etree.SubElement(param, "shortdesc", lang="en").text = desc
    actions = etree.SubElement(agent, "actions")
    for action in ("on", "off", "reboot", "status", "list", "monitor", "metadata",
                   "validate-all"):
        attrs = {"name": action}
        if action == "on":
            attrs["automatic"] = "0"
        etree.SubElement(actions, "action", attrs)
    return etree.tostring(agent, pretty_print=True, xml_declaration=True, encoding="UTF-8")


def options_from_stdin(stream) -> dict[str, str]:
    options = {}
    for number, line in enumerate(stream, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise LabError(f"stdin line {number}: expected key=value, got {line!r}")
        options[key.strip()] = value.strip()
    return options


def options_from_args(argv: list[str]) -> dict[str, str]:
    parser = argparse.ArgumentParser(prog=AGENT, description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--action", default="reboot", choices=ACTIONS)
    parser.add_argument("-n", "--plug", "--port", dest="plug")
    parser.add_argument("--lab", default=DEFAULT_NAME)
    parser.add_argument("--lab-root", dest="lab_root", default=str(DEFAULT_ROOT))
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}


def run(options: dict[str, str]) -> int:
    action = options.get("action", "reboot")
    if action == "metadata":
        sys.stdout.buffer.write(metadata())
        return EXIT_OK
    if action not in ACTIONS:
        raise LabError(f"unsupported action {action!r} (supported: {', '.join(ACTIONS)})")
    for key in options:
        if key not in PARAMETERS and key not in IGNORED and not key.startswith("pcmk_"):
            print(f"{AGENT}: ignoring unknown option {key!r}", file=sys.stderr)
    lab = LabLayout.for_lab(options.get("lab", DEFAULT_NAME),
                            Path(options.get("lab_root", str(DEFAULT_ROOT))))
    if action == "validate-all":
        return EXIT_OK
    if action == "monitor":
        request(lab.control_socket, "ping", timeout=10)
        return EXIT_OK
    if action == "list":
        state = request(lab.control_socket, "state", timeout=10)
        print("\n".join(f"{name}," for name in state["nodes"]))
        return EXIT_OK
    node = options.get("plug") or options.get("port")
    if not node:
        raise LabError(f"action {action} needs the node: plug=NODE (or port=NODE)")
    answer = request(lab.control_socket, action, node=node, timeout=POWER_TIMEOUT, client=AGENT)
    if action == "status":
        print(f"Status: {answer['power'].upper()}")
        return EXIT_OK if answer["power"] == "on" else EXIT_OFF
    print(f"Success: {node} {action}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        options = options_from_args(argv) if argv else options_from_stdin(sys.stdin)
        return run(options)
    except LabError as e:
        print(f"{AGENT}: {e}", file=sys.stderr)
        return EXIT_FAIL
