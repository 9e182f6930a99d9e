"""Parsing XML we did not write (domain definitions, the CIB, tool output) safely.

libxml2 expands internal entities and reads DTDs; with `<!DOCTYPE d [<!ENTITY x "2">]>`
our reading of a document would differ from libvirt's, and nested entities blow a small
file up to gigabytes. Neither libvirt's domain XML nor the CIB uses a DOCTYPE, so a
document that declares one is refused outright, as is one over a size cap.
"""
from __future__ import annotations

from lxml import etree

# A large domain XML is a few hundred KiB; a CIB of a big cluster a few MiB.
DEFAULT_LIMIT = 16 * 1024 * 1024


class UnsafeXml(ValueError):
    """The document is not well-formed, too large, or declares a DOCTYPE/entities."""


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_pis=True)


def parse(data: bytes | str, what: str = "document", limit: int = DEFAULT_LIMIT) -> etree._Element:
    """The root element of `data`; UnsafeXml (naming `what`) when it cannot be trusted."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > limit:
        raise UnsafeXml(f"{what} is larger than {limit // 1024} KiB")
    try:
        root = etree.fromstring(raw, _parser())
    except (etree.XMLSyntaxError, ValueError) as err:
        raise UnsafeXml(f"{what} is not well-formed XML: {err}") from None
    if root is None:
        raise UnsafeXml(f"{what} is empty")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise UnsafeXml(f"{what} declares a DOCTYPE (entities are not accepted)")
    # An undeclared entity reference would be kept as an unexpanded node: refuse it too.
    if next(root.iter(etree.Entity), None) is not None:
        raise UnsafeXml(f"{what} uses an entity reference")
    return root
