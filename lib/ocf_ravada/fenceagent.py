"""fence-agents' conventions, shared by our fence agents (fence_rbd, fence_ravada_lab).

Pacemaker's fencer runs a fence agent without arguments and hands it `key=value` lines on
stdin (action, plug or port, and the device's parameters); admins run it with options
(`-o off -n node2`). Exit codes: 0 done / power on, 1 failure, 2 power off (status).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Iterable, NamedTuple, TextIO

from .deadline import parse_seconds
from .metadata import serialize

ACTIONS = ("on", "off", "reboot", "status", "list", "monitor", "metadata", "validate-all")
EXIT_OK, EXIT_FAIL, EXIT_OFF = 0, 1, 2
# Keys Pacemaker or admins may pass that mean nothing to a device.
IGNORED = ("nodename", "verbose", "debug", "separator")


class FenceError(Exception):
    """A refusal or failure, with the one line the agent prints."""


class Option(NamedTuple):
    name: str
    shortdesc: str
    default: str | None = None
    getopt: str | None = None  # as shown in the metadata; default --name-with-dashes=[value]


class FenceAgent(NamedTuple):
    name: str
    shortdesc: str
    longdesc: str
    options: tuple[Option, ...]  # besides action, plug and port
    default_action: str
    plug_desc: str
    automatic_on: bool  # Pacemaker unfences with "on" (provides=unfencing)

    def all_options(self) -> tuple[Option, ...]:
        return (Option("action", "Fencing action", self.default_action, "-o, --action=[action]"),
                Option("plug", self.plug_desc, None, "-n, --plug=[node]"),
                Option("port", f"{self.plug_desc} (deprecated: use plug)", None, "--port=[node]"),
                *self.options)

    def default(self, name: str) -> str | None:
        return next((o.default for o in self.all_options() if o.name == name), None)


def metadata(agent: FenceAgent) -> bytes:
    from lxml import etree

    root = etree.Element("resource-agent", name=agent.name, shortdesc=agent.shortdesc)
    etree.SubElement(root, "longdesc").text = agent.longdesc
    params = etree.SubElement(root, "parameters")
    for option in agent.all_options():
        attrs = {"name": option.name, "unique": "0", "required": "0"}
        if option.name == "plug":
            attrs["obsoletes"] = "port"
        if option.name == "port":
            attrs["deprecated"] = "1"
        param = etree.SubElement(params, "parameter", attrs)
        getopt = option.getopt or f"--{option.name.replace('_', '-')}=[value]"
        etree.SubElement(param, "getopt", mixed=getopt)
        content = etree.SubElement(param, "content", type="string")
        if option.default is not None:
            content.set("default", option.default)
        etree.SubElement(param, "shortdesc", lang="en").text = option.shortdesc
    actions = etree.SubElement(root, "actions")
    for action in ACTIONS:
        attrs = {"name": action}
        if action == "on":
            attrs["automatic"] = "1" if agent.automatic_on else "0"
        etree.SubElement(actions, "action", attrs)
    return serialize(root)


def options_from_stdin(stream: Iterable[str]) -> dict[str, str]:
    options = {}
    for number, line in enumerate(stream, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise FenceError(f"stdin line {number}: expected key=value, got {line!r}")
        options[key.strip()] = value.strip()
    return options


def options_from_args(agent: FenceAgent, argv: list[str]) -> dict[str, str]:
    parser = argparse.ArgumentParser(prog=agent.name, description=agent.shortdesc)
    parser.add_argument("-o", "--action", choices=ACTIONS)
    parser.add_argument("-n", "--plug", "--port", dest="plug")
    for option in agent.options:
        parser.add_argument("--" + option.name.replace("_", "-"), dest=option.name)
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}


def option(agent: FenceAgent, options: dict[str, str], name: str) -> str | None:
    """The value given, or the option's default; empty counts as not given."""
    value = options.get(name)
    return value if value not in (None, "") else agent.default(name)


def action_of(agent: FenceAgent, options: dict[str, str], err: TextIO = sys.stderr) -> str:
    """The requested action (validated); unknown keys are reported, not fatal."""
    action = option(agent, options, "action")
    if action not in ACTIONS:
        raise FenceError(f"unsupported action {action!r} (supported: {', '.join(ACTIONS)})")
    known = {o.name for o in agent.all_options()}
    for key in options:
        if key not in known and key not in IGNORED and not key.startswith("pcmk_"):
            print(f"{agent.name}: ignoring unknown option {key!r}", file=err)
    return action


def seconds(agent: FenceAgent, options: dict[str, str], name: str, maximum: float) -> float:
    """Option `name` as a finite number of seconds in (0, maximum]; inf/nan are refused."""
    try:
        return parse_seconds(option(agent, options, name) or "", name, maximum)
    except ValueError as err:
        raise FenceError(str(err)) from None


def target_of(options: dict[str, str], action: str) -> str:
    node = options.get("plug") or options.get("port")
    if not node:
        raise FenceError(f"action {action} needs the node: plug=NODE (or port=NODE)")
    return node


def main(agent: FenceAgent, run: Callable[[str, dict[str, str]], int],
         errors: tuple[type[Exception], ...], argv: list[str] | None = None) -> int:
    """Parse (arguments, or stdin as the fencer sends it), answer metadata, run the action."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        options = options_from_args(agent, argv) if argv else options_from_stdin(sys.stdin)
        action = action_of(agent, options)
        if action == "metadata":
            sys.stdout.buffer.write(metadata(agent))
            return EXIT_OK
        return run(action, options)
    except UnicodeDecodeError as exc:
        print(f"{agent.name}: options are not UTF-8 text ({exc.reason})", file=sys.stderr)
        return EXIT_FAIL
    except (FenceError, *errors) as exc:
        print(f"{agent.name}: {getattr(exc, 'reason', None) or exc}", file=sys.stderr)
        return EXIT_FAIL
