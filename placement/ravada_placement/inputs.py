"""Reading files and XML we did not write: regular files only, size-capped, no entities.

A FIFO or a device given as --cib, --json or a domain `config` must not hang or exhaust the
planner; a DOCTYPE with entities would make us read another domain than libvirt defines
(`<name>test&x;</name>`), so a document that declares one is refused.
"""
from __future__ import annotations

import os
import stat

from lxml import etree
from ocf_ravada import safexml

from .model import InputError

# A CIB of a large cluster is a few MiB, a domain XML a few hundred KiB.
CIB_LIMIT = 64 * 1024 * 1024
DOMAIN_LIMIT = 4 * 1024 * 1024
JSON_LIMIT = 16 * 1024 * 1024


def read_regular_file(path: str, limit: int) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `limit` bytes.
    Opened non-blocking, so a FIFO is refused instead of waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None
    except ValueError:          # an embedded NUL byte
        raise InputError(f"cannot read {path!r}: invalid file name") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"cannot read {path}: not a regular file")
        if info.st_size > limit:
            raise InputError(f"cannot read {path}: larger than {limit // 1024} KiB")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise InputError(f"cannot read {path}: larger than {limit // 1024} KiB")
        return b"".join(chunks)
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None
    finally:
        os.close(fd)


def parse_xml(data: bytes, origin: str, limit: int = CIB_LIMIT) -> etree._Element:
    """The root element; InputError when not well-formed, too large, or declaring a
    DOCTYPE/entities (ocf_ravada.safexml, the parser every component uses)."""
    try:
        return safexml.parse(data, origin, limit)
    except safexml.UnsafeXml as err:
        raise InputError(_one_line(str(err))) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
