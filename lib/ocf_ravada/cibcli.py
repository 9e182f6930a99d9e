"""ravada-cib: list the CIB templates, render one, check it with crm_verify, apply it.

Exit status: 0 done; 1 crm_verify rejects the result, or Pacemaker failed (nothing applied);
2 usage error: unknown template, missing, unknown or malformed variable.
Every error is one line on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cibtemplates, pacemaker, safexml
from .cibtemplates import TemplateError, VariableError
from .cliargs import Parser, UsageError
from .deadline import Deadline

EXIT_REJECTED, EXIT_USAGE = 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ravada-cib",
                     description="Pacemaker configuration for ocf-ravada clusters from templates "
                                 "(VMs, nodeinfo and basesync clones, base rules, placement options, "
                                 "alerts, fencing topology).",
                     epilog="A saved CIB is also read when $CIB_file names it, like Pacemaker's tools.")
    parser.add_argument("--templates", metavar="DIR", help="template directory (default: the installed one)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    commands.add_parser("list", help="the templates and their variables")
    render = commands.add_parser("render", help="print TEMPLATE filled with name=value variables")
    render.add_argument("template", metavar="TEMPLATE")
    render.add_argument("variables", nargs="*", metavar="NAME=VALUE")
    render.add_argument("--check", action="store_true",
                        help="merge into the live CIB (or --cib / $CIB_file) and run crm_verify")
    render.add_argument("--apply", action="store_true",
                        help="check, then apply as one change (cibadmin --patch)")
    render.add_argument("--cib", metavar="FILE", help="with --check: a saved CIB instead of the live one")
    render.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="limit for Pacemaker's tools (default 60)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "render" and args.apply and args.cib:
            raise UsageError("--apply changes the live CIB ($CIB_file for a saved one), not --cib")
    except UsageError as err:
        print(f"ravada-cib: usage: {err} (see ravada-cib --help)", file=sys.stderr)
        return EXIT_USAGE
    directory = Path(args.templates) if args.templates else None
    try:
        catalogue = cibtemplates.templates(directory)
        if args.command == "list":
            print(listing(catalogue))
            return 0
        return _render(args, catalogue)
    except VariableError as err:
        print(f"ravada-cib: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TemplateError as err:
        print(f"ravada-cib: template error: {err}", file=sys.stderr)
        return EXIT_REJECTED
    except pacemaker.PacemakerError as err:
        print(f"ravada-cib: pacemaker: {err.reason}", file=sys.stderr)
        return EXIT_REJECTED


def listing(catalogue: dict[str, cibtemplates.Template]) -> str:
    lines = []
    for template in catalogue.values():
        lines.append(f"{template.name}: {template.summary}")
        for var in template.variables:
            default = "required" if var.required else f"default {var.default!r}"
            lines.append(f"    {var.name} ({var.type}, {default}): {var.help}")
    return "\n".join(lines)


def _render(args: argparse.Namespace, catalogue: dict[str, cibtemplates.Template]) -> int:
    template = catalogue.get(args.template)
    if template is None:
        raise VariableError(f"unknown template {args.template!r} (known: {', '.join(catalogue)})")
    fragment = cibtemplates.render(template, cibtemplates.parse_assignments(args.variables))
    if template.provisional:
        print(f"ravada-cib: warning: template {template.name} is provisional: {template.provisional}",
              file=sys.stderr)
    if not (args.check or args.apply):
        sys.stdout.write(cibtemplates.to_text(fragment))
        return 0
    deadline = Deadline(args.timeout)
    if args.cib:
        try:
            current = safexml.parse(Path(args.cib).read_bytes(), args.cib)
        except (OSError, safexml.UnsafeXml) as err:
            raise VariableError(f"--cib {args.cib}: {err}") from None
    else:
        current = pacemaker.query_cib(deadline)
    merged = cibtemplates.merge(current, fragment)
    valid_before, _ = pacemaker.verify_cib(current, deadline)
    valid_after, messages = pacemaker.verify_cib(merged, deadline)
    if not valid_after:
        # A configuration being built up is invalid until its fencing is in: that is no
        # reason to refuse a piece of it, but making a valid one invalid is.
        applying = args.apply and not valid_before
        print(f"ravada-cib: {'warning: ' if applying else ''}crm_verify rejects the configuration "
              f"with {template.name}{' (as it did before: applying anyway)' if applying else ''}: "
              f"{' '.join(messages.split())}", file=sys.stderr)
        if not applying:
            return EXIT_REJECTED
    if args.apply:
        changed = pacemaker.apply_change(current, merged, deadline)
        print(f"ravada-cib: {template.name} {'applied' if changed else 'already in place'}")
    else:
        print(f"ravada-cib: {template.name}: crm_verify accepts the configuration")
    return 0
