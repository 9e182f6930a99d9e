"""OCF 1.1 metadata, built with lxml so every description is escaped correctly.

lxml is imported only when the XML is wanted: monitors never pay for it.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

from .params import Parameter

OCF_API_VERSION = "1.1"


class Action(NamedTuple):
    name: str
    timeout: int  # seconds
    interval: int | None = None  # seconds
    depth: int | None = None
    role: str | None = None


class AgentInfo(NamedTuple):
    name: str
    version: str
    shortdesc: str
    longdesc: str
    parameters: Sequence[Parameter]
    actions: Sequence[Action]

    def action(self, name: str) -> Action | None:
        return next((a for a in self.actions if a.name == name), None)


def _desc(parent, tag: str, text: str) -> None:
    from lxml import etree

    element = etree.SubElement(parent, tag, lang="en")
    element.text = text


def _parameter(parent, param: Parameter) -> None:
    from lxml import etree

    attrs = {"name": param.name}
    if param.unique_group:
        attrs["unique-group"] = param.unique_group
    attrs["required"] = "1" if param.required else "0"
    attrs["reloadable"] = "1" if param.reloadable else "0"
    element = etree.SubElement(parent, "parameter", attrs)
    _desc(element, "longdesc", param.longdesc)
    _desc(element, "shortdesc", param.shortdesc)
    if param.deprecated is not None:
        deprecated = etree.SubElement(element, "deprecated")
        for replacement in param.deprecated.replaced_with:
            etree.SubElement(deprecated, "replaced-with", name=replacement)
        _desc(deprecated, "desc", param.deprecated.desc)
    content = etree.SubElement(element, "content", type=param.type)
    default = param.default_text()
    if default is not None:
        content.set("default", default)
    for option in param.options:
        etree.SubElement(content, "option", value=option)


def to_xml(info: AgentInfo) -> bytes:
    from lxml import etree

    root = etree.Element("resource-agent", name=info.name, version=info.version)
    etree.SubElement(root, "version").text = OCF_API_VERSION
    _desc(root, "longdesc", info.longdesc)
    _desc(root, "shortdesc", info.shortdesc)
    parameters = etree.SubElement(root, "parameters")
    for param in info.parameters:
        _parameter(parameters, param)
    actions = etree.SubElement(root, "actions")
    for action in info.actions:
        attrs = {"name": action.name, "timeout": f"{action.timeout}s"}
        if action.interval is not None:
            attrs["interval"] = f"{action.interval}s"
        if action.depth is not None:
            attrs["depth"] = str(action.depth)
        if action.role:
            attrs["role"] = action.role
        etree.SubElement(actions, "action", attrs)
    return serialize(root)


def serialize(root) -> bytes:
    """Agent metadata as every consumer reads it (also used by the fence agents).

    crmsh parses the agent's output as text, and lxml refuses text that carries an encoding
    declaration ("Cannot parse meta-data XML"): so no declaration, and ASCII with character
    references, which means the same bytes whatever the reader decodes them as.
    """
    from lxml import etree

    return etree.tostring(root, encoding="ASCII", xml_declaration=False, pretty_print=True)
