"""The main node's manifest of bases, and its strict parser.

The manifest is a small JSON file, `<directory>/.basesync/manifest.json` on the main node
(written by `ravada-basesync add`), copied by every node. It arrives over the network and
decides which files are written and deleted, so it is parsed as hostile input: size cap, no
NaN/Infinity, no duplicate keys, every field typed and bounded, names and file names from a
small alphabet (a name becomes part of a node attribute name, a file name part of a path),
backing chains that exist and have no cycle.

    {"version": 1, "serial": 7,
     "bases": [{"name": "deb12", "file": "deb12.qcow2", "size": 1073741824,
                "sha256": "<64 hex>", "format": "qcow2", "backing": null,
                "nodes": ["node2", "node3"]}]}

`nodes` (optional) limits the base to those nodes; absent or null means every node.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Iterable

MANIFEST_FILE = ".basesync/manifest.json"
MAX_BYTES = 1024 * 1024
MAX_BASES = 1000
MAX_CHAIN = 16
MAX_SIZE = 2 ** 50          # 1 PiB: larger is a typo or an attack
FORMATS = ("qcow2", "raw")
# A base name becomes node attribute ravada-base-<name> and a CIB id part.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")
# A file name inside the directory: no path separator, not hidden, no leading dash.
FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}")
NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """The manifest cannot be used; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class Base:
    name: str
    file: str
    size: int
    sha256: str
    format: str = "qcow2"
    backing: str | None = None
    nodes: tuple[str, ...] | None = None   # None: every node

    def wanted_on(self, node: str) -> bool:
        return self.nodes is None or node in self.nodes

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["nodes"] = list(self.nodes) if self.nodes is not None else None
        return data


@dataclasses.dataclass(frozen=True)
class Manifest:
    bases: tuple[Base, ...]
    serial: int = 0

    def by_name(self) -> dict[str, Base]:
        return {b.name: b for b in self.bases}

    def chain(self, name: str) -> list[Base]:
        """The base and what it sits on, deepest backing first (the order to sync in)."""
        index = self.by_name()
        out: list[Base] = []
        current: str | None = name
        while current is not None:
            out.append(index[current])
            current = index[current].backing
        return list(reversed(out))

    def wanted_on(self, node: str) -> list[Base]:
        """Bases this node should hold, in sync order: a wanted base brings its backing chain
        (a clone of deb12-desktop cannot run without deb12 under it)."""
        wanted: dict[str, Base] = {}
        for base in self.bases:
            if base.wanted_on(node):
                for link in self.chain(base.name):
                    wanted.setdefault(link.name, link)
        return in_sync_order(wanted.values(), self.by_name())

    def to_bytes(self) -> bytes:
        data = {"version": 1, "serial": self.serial, "bases": [b.to_json() for b in self.bases]}
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8")


def in_sync_order(bases: Iterable[Base], index: dict[str, Base]) -> list[Base]:
    """Backing bases before the bases on top of them; otherwise by name."""
    def depth(base: Base) -> int:
        return len([b for b in _walk(base, index)]) - 1
    return sorted(bases, key=lambda b: (depth(b), b.name))


def _walk(base: Base, index: dict[str, Base]) -> Iterable[Base]:
    current: Base | None = base
    while current is not None:
        yield current
        current = index.get(current.backing) if current.backing else None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ManifestError("duplicate key in an object")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise ManifestError(f"{name} is not a number")


def parse(raw: bytes) -> Manifest:
    if len(raw) > MAX_BYTES:
        raise ManifestError(f"manifest larger than {MAX_BYTES // 1024} KiB")
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                          parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ManifestError("manifest is not UTF-8") from None
    except RecursionError:
        raise ManifestError("manifest nests too deeply") from None
    except ValueError as err:   # json.JSONDecodeError and ManifestError
        raise ManifestError(f"manifest is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ManifestError("manifest is not a JSON object")
    if data.get("version") != 1:
        raise ManifestError(f"unsupported manifest version {str(data.get('version'))[:20]!r}")
    serial = data.get("serial", 0)
    if not _is_int(serial) or not 0 <= serial <= 2 ** 53:
        raise ManifestError("serial must be a whole number >= 0")
    entries = data.get("bases")
    if not isinstance(entries, list):
        raise ManifestError("'bases' must be a list")
    if len(entries) > MAX_BASES:
        raise ManifestError(f"more than {MAX_BASES} bases")
    bases = tuple(_base(entry, i) for i, entry in enumerate(entries))
    _check_unique(bases)
    _check_chains(bases)
    return Manifest(bases, serial)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(entry: dict, key: str, pattern: re.Pattern, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        shown = repr(value)[:40]
        raise ManifestError(f"{where}: invalid {key} {shown}")
    return value


def _base(entry: Any, i: int) -> Base:
    where = f"base #{i + 1}"
    if not isinstance(entry, dict):
        raise ManifestError(f"{where} is not an object")
    name = _text(entry, "name", NAME, where)
    where = f"base {name}"
    file = _text(entry, "file", FILE, where)
    size = entry.get("size")
    if not _is_int(size) or not 0 < size <= MAX_SIZE:
        raise ManifestError(f"{where}: size must be a whole number of bytes > 0")
    sha = _text(entry, "sha256", SHA256, where)
    fmt = entry.get("format", "qcow2")
    if fmt not in FORMATS:
        raise ManifestError(f"{where}: format must be one of {', '.join(FORMATS)}")
    backing = entry.get("backing")
    if backing is not None:
        backing = _text(entry, "backing", NAME, where)
    nodes = entry.get("nodes")
    if nodes is not None:
        if not isinstance(nodes, list) or len(nodes) > 1000 or not all(
                isinstance(n, str) and NODE.fullmatch(n) for n in nodes):
            raise ManifestError(f"{where}: nodes must be a list of node names")
        nodes = tuple(nodes)
    return Base(name, file, size, sha, fmt, backing, nodes)


def _check_unique(bases: tuple[Base, ...]) -> None:
    for what, values in (("name", [b.name for b in bases]), ("file", [b.file for b in bases])):
        seen: set[str] = set()
        for value in values:
            if value in seen:
                raise ManifestError(f"two bases with {what} {value}")
            seen.add(value)


def _check_chains(bases: tuple[Base, ...]) -> None:
    index = {b.name: b for b in bases}
    for base in bases:
        seen = {base.name}
        current = base
        while current.backing is not None:
            if current.backing not in index:
                raise ManifestError(f"base {current.name}: backing base {current.backing} is not in the manifest")
            current = index[current.backing]
            if current.name in seen:
                raise ManifestError(f"base {base.name}: backing chain loops through {current.name}")
            seen.add(current.name)
            if len(seen) > MAX_CHAIN:
                raise ManifestError(f"base {base.name}: backing chain longer than {MAX_CHAIN}")
