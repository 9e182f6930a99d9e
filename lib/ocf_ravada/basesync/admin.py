"""ravada-basesync: the main node's manifest, written by the admin.

    ravada-basesync add DIRECTORY FILE [--name NAME] [--nodes N1,N2]   hash FILE, list it
    ravada-basesync remove DIRECTORY NAME                               unlist a base
    ravada-basesync show DIRECTORY                                      print the manifest

`add` reads the format and backing file with qemu-img; a backing file must be listed first
(the chain is synced in order). Each change raises the manifest's serial and replaces the
file atomically. Exit status: 0 done, 1 error, 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from . import verify
from .manifest import FILE, MANIFEST_FILE, NAME, NODE, Base, Manifest, ManifestError, parse

EXIT_ERROR, EXIT_USAGE = 1, 2
QEMU_IMG_LIMIT = 60.0


class AdminError(Exception):
    pass


def load(directory: str) -> Manifest:
    try:
        with open(os.path.join(directory, MANIFEST_FILE), "rb") as handle:
            return parse(handle.read(2 * 1024 * 1024))
    except FileNotFoundError:
        return Manifest(())
    except ManifestError as err:
        raise AdminError(f"{os.path.join(directory, MANIFEST_FILE)}: {err}") from None


def save(directory: str, manifest: Manifest) -> None:
    path = os.path.join(directory, MANIFEST_FILE)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path + ".new", "wb") as handle:
        handle.write(manifest.to_bytes())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(path + ".new", path)
    verify.fsync_directory(os.path.dirname(path))


def image_info(path: str) -> tuple[str, str | None]:
    """(format, absolute backing file or None) from qemu-img."""
    try:
        done = subprocess.run(["qemu-img", "info", "--output=json", "-U", path], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=QEMU_IMG_LIMIT)
    except FileNotFoundError:
        raise AdminError("qemu-img is not installed (qemu-utils)") from None
    except subprocess.TimeoutExpired:
        raise AdminError(f"qemu-img info {path} did not answer in {QEMU_IMG_LIMIT:.0f}s") from None
    if done.returncode != 0:
        raise AdminError(f"qemu-img info {path}: {done.stderr.decode('utf-8', 'replace').strip()}")
    info = json.loads(done.stdout)
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if backing:
        backing = os.path.normpath(os.path.join(os.path.dirname(path), backing))
    return str(info.get("format")), backing


def add(directory: str, file: str, name: str | None, nodes: list[str] | None) -> Base:
    manifest = load(directory)
    file = os.path.basename(file)
    name = name or file.rsplit(".", 1)[0]
    if not FILE.fullmatch(file):
        raise AdminError(f"file name {file!r} is not allowed (letters, digits, _ . + -)")
    if not NAME.fullmatch(name):
        raise AdminError(f"base name {name!r} is not allowed (a letter, then letters, digits, _ . -)")
    for node in nodes or []:
        if not NODE.fullmatch(node):
            raise AdminError(f"not a node name: {node!r}")
    path = os.path.join(directory, file)
    if not os.path.isfile(path):
        raise AdminError(f"{path} is not a file")
    fmt, backing_path = image_info(path)
    if fmt not in ("qcow2", "raw"):
        raise AdminError(f"{path} is {fmt}, not qcow2 or raw")
    backing = None
    if backing_path:
        by_path = {os.path.join(directory, b.file): b.name for b in manifest.bases}
        backing = by_path.get(backing_path)
        if backing is None:
            raise AdminError(f"{path} sits on {backing_path}, which is not a listed base: add it first")
    base = Base(name, file, os.path.getsize(path), verify.file_digest(path), fmt, backing,
                tuple(nodes) if nodes else None)
    others = tuple(b for b in manifest.bases if b.name != name and b.file != file)
    updated = Manifest(others + (base,), manifest.serial + 1)
    parse(updated.to_bytes())   # the same checks every node applies
    save(directory, updated)
    return base


def remove(directory: str, name: str) -> None:
    manifest = load(directory)
    if name not in manifest.by_name():
        raise AdminError(f"no base {name} in the manifest")
    users = [b.name for b in manifest.bases if b.backing == name]
    if users:
        raise AdminError(f"base {name} is the backing of {', '.join(users)}: remove those first")
    save(directory, Manifest(tuple(b for b in manifest.bases if b.name != name), manifest.serial + 1))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="ravada-basesync", description="The main node's manifest of bases for ocf:ravada:basesync.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    adding = commands.add_parser("add", help="hash a base file in DIRECTORY and list it")
    adding.add_argument("directory")
    adding.add_argument("file")
    adding.add_argument("--name", help="base name (default: the file name without its extension)")
    adding.add_argument("--nodes", help="comma separated nodes that get it (default: every node)")
    removing = commands.add_parser("remove", help="unlist a base (nodes drop it once no VM uses it)")
    removing.add_argument("directory")
    removing.add_argument("name")
    showing = commands.add_parser("show", help="print the manifest")
    showing.add_argument("directory")
    args = parser.parse_args(argv)
    try:
        if args.command == "add":
            base = add(args.directory, args.file, args.name,
                       [n for n in args.nodes.split(",") if n] if args.nodes else None)
            print(f"{base.name}: {base.file} {base.size} bytes sha256 {base.sha256}"
                  + (f" on {base.backing}" if base.backing else ""))
        elif args.command == "remove":
            remove(args.directory, args.name)
        else:
            sys.stdout.write(load(args.directory).to_bytes().decode())
    except (AdminError, OSError) as err:
        sys.stderr.write(f"ravada-basesync: {err}\n")
        return EXIT_ERROR
    return 0
