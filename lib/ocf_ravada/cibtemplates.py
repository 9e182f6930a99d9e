"""CIB templates: XML files in cib-templates/ whose placeholders are filled with lxml.

A template is a Pacemaker configuration fragment wrapped in the template namespace:

    <t:template xmlns:t="urn:ocf-ravada:cib-template:1" summary="one line">
      <t:var name="id" type="id" help="..."/>           required (no default)
      <t:var name="base" type="id" default="" help=""/> optional ("" = unset)
      <t:section name="resources"> ... CIB elements ... </t:section>
    </t:template>

In the CIB elements, `{name}` in an attribute value is replaced by the variable's value and
the attribute is set through lxml, so every value is XML-escaped by construction; nothing is
ever assembled as text.  Directives (attributes in the template namespace, removed from the
output):
    t:if="var"               keep the element only when the variable is not empty
    t:advertised="timeout"   on an <op>: take the timeout (and "interval", if listed) that the
                             enclosing primitive's agent advertises in its meta-data
A section named in `SECTIONS` says where the elements go in <configuration>.

Merging into a CIB (for --check and --apply): an element replaces the one of the same tag
and id in its section, or is appended; in property and meta-attribute sets, name/value pairs
are merged by name so options set elsewhere are kept; a fencing level replaces one with the
same target and index.
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from lxml import etree

from . import safexml

NS = "urn:ocf-ravada:cib-template:1"
T = f"{{{NS}}}"
# Where each section's elements live in <configuration>.
SECTIONS = ("crm_config", "rsc_defaults", "op_defaults", "resources", "constraints", "alerts",
            "fencing-topology")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A Pacemaker id is an XML ID (NCName); the schema refuses anything else.
NCNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
INTEGER = re.compile(r"^-?[0-9]{1,18}$")
VALUE_TYPES = ("id", "integer", "text", "score")
MAX_VALUE = 4096
SETS = ("cluster_property_set", "meta_attributes", "instance_attributes", "utilization")
AGENT_TIMEOUT = 10.0


class TemplateError(ValueError):
    """A template file is broken (a bug in the template, not in the user's input)."""


class VariableError(ValueError):
    """The user's variables do not fit the template; the message names the variable."""


@dataclass(frozen=True)
class Variable:
    name: str
    type: str
    default: str | None     # None: required
    help: str

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True)
class Template:
    name: str
    path: Path
    summary: str
    variables: tuple[Variable, ...]
    provisional: str | None     # why the template is not ready for production, if it is not
    root: etree._Element

    def variable(self, name: str) -> Variable | None:
        return next((v for v in self.variables if v.name == name), None)


def default_directory() -> Path:
    """cib-templates/ of the source tree, else the installed copy."""
    tree = Path(__file__).resolve().parent.parent.parent / "cib-templates"
    if tree.is_dir():
        return tree
    return Path(os.environ.get("RAVADA_CIB_TEMPLATES", "/usr/share/ocf-ravada/cib-templates"))


def load(path: Path) -> Template:
    try:
        root = safexml.parse(path.read_bytes(), f"template {path.name}")
    except (OSError, safexml.UnsafeXml) as err:
        raise TemplateError(f"template {path}: {err}") from None
    if root.tag != f"{T}template":
        raise TemplateError(f"{path}: the root element is not t:template")
    variables = []
    for var in root.iterfind(f"{T}var"):
        kind = var.get("type", "text")
        if kind not in VALUE_TYPES:
            raise TemplateError(f"{path}: variable {var.get('name')!r} has unknown type {kind!r}")
        variables.append(Variable(var.get("name", ""), kind, var.get("default"), var.get("help", "")))
    names = {v.name for v in variables}
    for element in root.iter(etree.Element):
        for value in element.attrib.values():
            for used in PLACEHOLDER.findall(value):
                if used not in names:
                    raise TemplateError(f"{path}: placeholder {{{used}}} is not a declared variable")
        condition = element.get(f"{T}if")
        if condition is not None and condition not in names:
            raise TemplateError(f"{path}: t:if names undeclared variable {condition!r}")
    for section in root.iterfind(f"{T}section"):
        if section.get("name") not in SECTIONS:
            raise TemplateError(f"{path}: unknown section {section.get('name')!r}")
    return Template(path.stem, path, root.get("summary", ""), tuple(variables), root.get("provisional"), root)


def template_files(directory: Path | None = None) -> list[Path]:
    directory = directory or default_directory()
    if not directory.is_dir():
        raise TemplateError(f"no template directory {directory} (set RAVADA_CIB_TEMPLATES or use --templates)")
    result = []
    for path in sorted(directory.glob("*.xml")):
        head = path.read_bytes()[:4096]
        if NS.encode() in head:
            result.append(path)
    return result


def templates(directory: Path | None = None) -> dict[str, Template]:
    """The templates (files in the template namespace; other XML there, e.g. samples, is skipped)."""
    return {t.name: t for t in (load(p) for p in template_files(directory))}


def parse_assignments(items: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise VariableError(f"{item!r} is not name=value")
        if name in values:
            raise VariableError(f"variable {name!r} given twice")
        values[name] = value
    return values


def _check_value(var: Variable, value: str) -> None:
    if len(value) > MAX_VALUE:
        raise VariableError(f"variable {var.name!r}: longer than {MAX_VALUE} characters")
    if any(ord(c) < 32 and c not in "\t" for c in value):
        raise VariableError(f"variable {var.name!r}: control characters are not allowed")
    if value == "" and not var.required:
        return
    if var.type == "id" and not NCNAME.match(value):
        raise VariableError(f"variable {var.name!r}: {value!r} is not a valid Pacemaker id "
                            "(a letter or _ first, then letters, digits, _ . -)")
    if var.type == "integer" and not INTEGER.match(value):
        raise VariableError(f"variable {var.name!r}: {value!r} is not an integer")
    if var.type == "score" and not (INTEGER.match(value) or value in ("INFINITY", "-INFINITY", "+INFINITY")):
        raise VariableError(f"variable {var.name!r}: {value!r} is not a score (integer or [-]INFINITY)")


def resolve(template: Template, given: Mapping[str, str]) -> dict[str, str]:
    """The template's variables with the user's values and the defaults; VariableError names
    the first unknown, missing or malformed variable."""
    unknown = sorted(set(given) - {v.name for v in template.variables})
    if unknown:
        raise VariableError(f"unknown variable {unknown[0]!r} for template {template.name} "
                            f"(it has: {', '.join(v.name for v in template.variables)})")
    values = {}
    for var in template.variables:
        if var.name in given:
            value = given[var.name]
        elif var.required:
            raise VariableError(f"missing variable {var.name!r} for template {template.name}")
        else:
            value = var.default or ""
        if var.required and value == "":
            raise VariableError(f"variable {var.name!r} must not be empty")
        _check_value(var, value)
        values[var.name] = value
    return values


# -- the agent's advertised timeouts --------------------------------------------------------

def agent_metadata(cls: str, provider: str | None, kind: str) -> etree._Element:
    """The agent's meta-data, as Pacemaker would run it: ours from the source tree when run
    from there (what `make install` would install), else $OCF_ROOT/resource.d/PROVIDER/TYPE."""
    if cls != "ocf" or not provider or not NCNAME.match(provider) or not NCNAME.match(kind):
        raise TemplateError(f"advertised timeouts need an OCF agent, not {cls}:{provider}:{kind}")
    candidates = []
    if provider == "ravada":
        candidates.append(Path(__file__).resolve().parent.parent.parent / "agents" / kind)
    candidates.append(Path(os.environ.get("OCF_ROOT", "/usr/lib/ocf")) / "resource.d" / provider / kind)
    agent = next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
    if agent is None:
        raise TemplateError(f"agent ocf:{provider}:{kind} is not installed (looked in "
                            f"{', '.join(str(c) for c in candidates)})")
    try:
        done = subprocess.run([str(agent), "meta-data"], capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=AGENT_TIMEOUT, env={**os.environ, "OCF_ROOT": os.environ.get("OCF_ROOT", "/usr/lib/ocf")})
    except (OSError, subprocess.TimeoutExpired) as err:
        raise TemplateError(f"{agent} meta-data: {err}") from None
    if done.returncode != 0:
        raise TemplateError(f"{agent} meta-data failed (exit {done.returncode})")
    try:
        return safexml.parse(done.stdout, f"meta-data of ocf:{provider}:{kind}")
    except safexml.UnsafeXml as err:
        raise TemplateError(str(err)) from None


MetadataSource = Callable[[str, "str | None", str], etree._Element]


def _advertised(op: etree._Element, fields: list[str], metadata: MetadataSource, cache: dict) -> None:
    primitive = next((a for a in op.iterancestors("primitive")), None)
    if primitive is None:
        raise TemplateError("t:advertised on an op outside a primitive")
    key = (primitive.get("class"), primitive.get("provider"), primitive.get("type"))
    if key not in cache:
        cache[key] = metadata(*key)
    name = op.get("name")
    # The monitor of a given role/depth would need more matching; ours advertise one each.
    action = next((a for a in cache[key].iterfind("actions/action") if a.get("name") == name), None)
    if action is None:
        raise TemplateError(f"agent {':'.join(k or '' for k in key)} advertises no {name} action")
    for field in fields:
        if field not in ("timeout", "interval"):
            raise TemplateError(f"t:advertised: unknown field {field!r}")
        if action.get(field) is not None:
            op.set(field, action.get(field))
        elif field == "timeout":
            raise TemplateError(f"agent advertises no timeout for {name}")


# -- rendering ------------------------------------------------------------------------------

def render(template: Template, given: Mapping[str, str],
           metadata: MetadataSource = agent_metadata) -> etree._Element:
    """A <configuration> holding the template's sections, filled in."""
    values = resolve(template, given)
    body = copy.deepcopy(template.root)
    for element in list(body.iter(etree.Element)):
        condition = element.get(f"{T}if")
        if condition is not None and values[condition] == "" and element.getparent() is not None:
            element.getparent().remove(element)
    cache: dict = {}
    configuration = etree.Element("configuration")
    for section in body.iterfind(f"{T}section"):
        target = _section(configuration, section.get("name"))
        for child in section:
            if not isinstance(child.tag, str):
                continue   # comments in the template are for its readers
            target.append(child)
    for element in configuration.iter(etree.Element):
        for attr, raw in list(element.attrib.items()):
            if attr.startswith(T):
                continue
            filled = PLACEHOLDER.sub(lambda m: values[m.group(1)], raw)
            element.set(attr, filled)   # lxml escapes the value
    for op in configuration.iter("op"):
        fields = op.get(f"{T}advertised")
        if fields:
            _advertised(op, fields.split(), metadata, cache)
    for element in configuration.iter(etree.Element):
        for attr in [a for a in element.attrib if a.startswith(T)]:
            del element.attrib[attr]
    for section in list(configuration):
        if len(section) == 0:
            configuration.remove(section)   # everything in it was conditional and unset
    etree.cleanup_namespaces(configuration)
    return configuration


def _section(configuration: etree._Element, name: str) -> etree._Element:
    found = configuration.find(name)
    if found is None:
        found = etree.SubElement(configuration, name)
    return found


def to_text(configuration: etree._Element) -> str:
    # Re-indented from scratch: the template's own indentation does not fit the output's.
    for element in configuration.iter():
        element.tail = None
        if len(element):
            element.text = None
    return etree.tostring(configuration, pretty_print=True, encoding="unicode")


# -- merging into a CIB ----------------------------------------------------------------------

def merge(cib: etree._Element, fragment: etree._Element) -> etree._Element:
    """A copy of `cib` with the fragment's elements in place (see the module's docstring)."""
    result = copy.deepcopy(cib)
    configuration = result.find("configuration")
    if configuration is None:
        raise VariableError("the CIB has no <configuration>")
    for section in fragment:
        target = configuration.find(section.tag)
        if target is None:
            target = etree.SubElement(configuration, section.tag)
        for element in section:
            _merge_element(target, copy.deepcopy(element))
    _check_unique_ids(result)
    return result


def _merge_element(target: etree._Element, element: etree._Element) -> None:
    if element.tag == "fencing-level":
        for old in target.iterfind("fencing-level"):
            if old.get("index") == element.get("index") and old.get("target") == element.get("target"):
                target.remove(old)
    existing = next((e for e in target if isinstance(e.tag, str) and e.get("id") == element.get("id")), None)
    if existing is not None and existing.tag != element.tag:
        raise VariableError(f"id {element.get('id')!r} is already used by a <{existing.tag}>")
    if existing is not None and element.tag in SETS:
        for pair in element.iterfind("nvpair"):
            old = next((p for p in existing.iterfind("nvpair") if p.get("name") == pair.get("name")), None)
            if old is not None:
                old.set("value", pair.get("value", ""))
            else:
                existing.append(pair)
        return
    if existing is not None:
        target.replace(existing, element)
    else:
        target.append(element)


def _check_unique_ids(cib: etree._Element) -> None:
    seen: dict[str, str] = {}
    for element in cib.find("configuration").iter(etree.Element):
        ident = element.get("id")
        # A <node>'s id is no XML ID in Pacemaker's schema: a remote node's <node> has the id
        # of its connection resource (both are the node's name), a cluster node's a number.
        if ident is None or element.tag == "node":
            continue
        if ident in seen:
            raise VariableError(f"id {ident!r} would be used twice in the configuration "
                                f"(<{seen[ident]}> and <{element.tag}>): choose another id")
        seen[ident] = element.tag
