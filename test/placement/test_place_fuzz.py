"""ravada-place over generated hostile inputs (JSON, CIBs, domain XML, odd paths and options):
every run ends inside its timeout with a documented exit code, no traceback, and at most one
line on stderr (exactly one when it failed)."""
from __future__ import annotations

import json
import os
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from lxml import etree

from placement_helpers import TOOL, require_pacemaker_tools
from ravada_placement import cibgen
from ravada_placement.model import VM, Cluster, Node

DOCUMENTED = {0, 1, 2, 3, 4}
TIMEOUT = 30
ODD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-0", "1.5", "10" * 40, "9" * 5000, "-1",
               '"²"', '"١٢"', '" 7 "', '"0x10"', "true", "null", "[]", "{}"]
ODD_TEXT = ["nan", "inf", "-INFINITY", "²", "١٢", "1e5", "", " ", "0x1F", "9" * 400, "-0", "+5", "abc"]
ODD_NAMES = ["", " ", "a\u0000b", "\ud800", "x" * 5000, "vm\n2", "é", "\u202e", "a'b\"c<d>&"]


def _valid_json() -> dict:
    return {"nodes": [{"name": "n1", "cpu": 8, "hv_memory": 16384, "bases": ["w"]},
                      {"name": "n2", "cpu": 4, "hv_memory": 8192}],
            "vms": [{"name": "a", "cpu": 2, "hv_memory": 2048, "base": "w"},
                    {"name": "b", "cpu": 1, "hv_memory": 1024, "node": "n2"}]}


def json_cases(rng: random.Random) -> list[bytes]:
    cases = [b"", b"\xff\xfe\x00garbage", b"[" * 200000 + b"]" * 200000, b'{"nodes": [], "vms": []}' + b" " * 10,
             json.dumps({"nodes": 1, "vms": []}).encode(), b'{"nodes": [], "vms": [], "nodes": {}}']
    for number in ODD_NUMBERS:
        for field in ("cpu", "hv_memory"):
            text = json.dumps(_valid_json()).replace(f'"{field}": 2,' if field == "cpu" else '"hv_memory": 2048',
                                                     f'"{field}": {number},' if field == "cpu"
                                                     else f'"hv_memory": {number}')
            cases.append(text.encode())
    for name in ODD_NAMES:
        doc = _valid_json()
        target = rng.choice([doc["nodes"][0], doc["vms"][0]])
        target["name"] = name
        cases.append(json.dumps(doc).encode("utf-8", "surrogatepass"))
    doc = _valid_json()
    doc["vms"][0]["priority"] = 10 ** 30
    cases.append(json.dumps(doc).encode())
    return cases


def _cib() -> etree._Element:
    c = Cluster({"n1": Node("n1", 8, 16384), "n2": Node("n2", 8, 16384)},
                {"v1": VM("v1", 1, 1024), "v2": VM("v2", 1, 1024, node="n1")})
    return cibgen.live_like_cib(c, "utilization")


def cib_cases(rng: random.Random, domain_paths: list[str]) -> list[bytes]:
    base = _cib()
    cases = [b"<!DOCTYPE cib [<!ENTITY x 'n3'>]>" + etree.tostring(base).replace(b'uname="n1"', b'uname="&x;"'),
             b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">'
             b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;">]><cib><configuration>&c;</configuration></cib>',
             b"<cib>" * 300 + b"</cib>" * 300, b"\x00\x01", b"<cib><configuration/></cib>"]

    def mutated(change) -> bytes:
        cib = _cib()
        change(cib)
        return etree.tostring(cib)

    def set_attr(path: str, name: str, value: str):
        return lambda cib: [el.set(name, value) for el in cib.iterfind(path)]

    def drop_attr(path: str, name: str):
        return lambda cib: [el.attrib.pop(name, None) for el in cib.iterfind(path)]

    def add(parent: str, xml: str):
        return lambda cib: cib.find(parent).append(etree.fromstring(xml))

    for text in ODD_TEXT:
        cases.append(mutated(set_attr("configuration/resources/primitive/utilization/nvpair", "value", text)))
        cases.append(mutated(set_attr("configuration/nodes/node/utilization/nvpair[@name='cpu']", "value", text)))
        cases.append(mutated(add("configuration/constraints",
                                 f'<rsc_location id="l" rsc="v1" node="n1" score="{text}"/>')))
        cases.append(mutated(add("configuration/resources/primitive",
                                 f'<meta_attributes id="m"><nvpair id="m1" name="priority" value="{text}"/>'
                                 f'<nvpair id="m2" name="resource-stickiness" value="{text}"/>'
                                 f'<nvpair id="m3" name="migration-threshold" value="{text}"/></meta_attributes>')))
    cases += [
        mutated(drop_attr("configuration/resources/primitive", "id")),
        mutated(drop_attr("configuration/nodes/node", "uname")),
        mutated(add("configuration/resources", '<group><primitive class="ocf" provider="pacemaker" '
                    'type="Dummy"/></group>')),
        mutated(add("configuration/resources", '<group id="g"/>')),
        mutated(add("configuration/constraints",
                    '<rsc_location id="p" rsc-pattern="([" node="n1" score="-INFINITY"/>')),
        mutated(add("configuration/constraints", '<rsc_location id="p"><rule id="r" score="-INFINITY">'
                    + '<rule id="rr" score="0">' * 50 + '</rule>' * 50 + '</rule></rsc_location>')),
        mutated(add("configuration/constraints", '<rsc_colocation id="c" rsc="v1" score="INFINITY"/>')),
        mutated(add("configuration/constraints", '<rsc_colocation id="c" rsc="v1" with-rsc="v1" score="INFINITY"/>')),
        mutated(add("configuration/constraints", '<rsc_colocation id="c" score="-INFINITY"><resource_set id="s">'
                    '<resource_ref id="v1"/><resource_ref id="v2"/></resource_set></rsc_colocation>')),
        mutated(add("configuration/resources", '<clone id="cl"><primitive id="cp" class="ocf" provider="pacemaker" '
                    'type="Dummy"><utilization id="cu"><nvpair id="cu1" name="hv_memory" value="-5"/></utilization>'
                    '</primitive></clone>')),
        mutated(add("status/node_state", '<transient_attributes id="t"><instance_attributes id="ti">'
                    '<nvpair id="f" name="fail-count-v1#start_0" value="lots"/></instance_attributes>'
                    '</transient_attributes>')),
    ]
    for path in domain_paths:
        def domain_vm(cib, path=path):
            primitive = etree.SubElement(cib.find("configuration/resources"), "primitive", id="dom",
                                         type="VirtualDomain", provider="heartbeat", **{"class": "ocf"})
            attrs = etree.SubElement(primitive, "instance_attributes", id="dom-ia")
            etree.SubElement(attrs, "nvpair", id="dom-config", name="config", value=path)
        cases.append(mutated(domain_vm))
    rng.shuffle(cases)
    return cases


def domains(tmp_path) -> list[str]:
    texts = {
        "entity.xml": "<!DOCTYPE domain [<!ENTITY x '2'>]><domain><name>test&x;</name><vcpu>14</vcpu>"
                      "<memory>1048576</memory></domain>",
        "nomem.xml": "<domain><name>d</name><vcpu>2</vcpu></domain>",
        "badcur.xml": "<domain><name>d</name><vcpu current='abc'>2</vcpu><memory>1024</memory></domain>",
        "unit.xml": "<domain><name>d</name><memory unit='parsec'>1</memory></domain>",
        "huge.xml": "<domain><name>d</name><memory unit='TiB'>99999999999</memory></domain>",
        "ok.xml": "<domain><name>d</name><memory unit='MiB'>512</memory></domain>",
    }
    paths = []
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    fifo = tmp_path / "domain.fifo"
    os.mkfifo(fifo)
    return paths + [str(fifo), "/dev/zero", str(tmp_path), str(tmp_path / "absent.xml"), "bad\\x00name"]


def run(args: list[str]) -> tuple[list[str], subprocess.CompletedProcess | None]:
    try:
        return args, subprocess.run(["/usr/bin/python3", str(TOOL), *args], capture_output=True, text=True,
                                    timeout=TIMEOUT, errors="replace")
    except subprocess.TimeoutExpired:
        return args, None


def check(results) -> None:
    bad = []
    for args, proc in results:
        if proc is None:
            bad.append(f"{args}: no answer within {TIMEOUT}s")
            continue
        lines = proc.stderr.splitlines()
        if (proc.returncode not in DOCUMENTED or "Traceback" in proc.stderr
                or len(lines) > 1 or (proc.returncode != 0 and len(lines) != 1)):
            bad.append(f"{args}: exit {proc.returncode}, stderr {proc.stderr[-600:]!r}")
    assert not bad, "\n".join(bad)


def test_hostile_json_inputs_end_cleanly(tmp_path):
    rng = random.Random(20261130)
    argvs = []
    for i, data in enumerate(json_cases(rng)):
        path = tmp_path / f"case{i}.json"
        path.write_bytes(data)
        argvs.append([rng.choice(["place", "rebalance"]), "--json", str(path)])
    fifo = tmp_path / "cluster.fifo"
    os.mkfifo(fifo)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_valid_json()))
    argvs += [["place", "--json", str(fifo)], ["place", "--json", "/dev/zero"], ["place", "--json", str(tmp_path)],
              ["drain", "n2", "--json", str(good), "--format", "json"],
              ["place", "--json", str(good), "--format", "xml"], ["place", "--json", str(good), "--format", "crm"]]
    for option in ("--cpu-weight", "--memory-weight", "--cpu-ratio", "--memory-ratio", "--score", "--min-gain",
                   "--max-moves"):
        for value in ("nan", "inf", "-inf", "1e999", "-1", "0", "²", "9" * 400, ""):
            argvs.append(["rebalance", "--json", str(good), option, value])
    with ThreadPoolExecutor(max_workers=4) as pool:
        check(list(pool.map(run, argvs)))


def test_hostile_cibs_and_domain_xml_end_cleanly(tmp_path):
    require_pacemaker_tools()
    rng = random.Random(20261201)
    argvs = []
    for i, data in enumerate(cib_cases(rng, domains(tmp_path))):
        path = tmp_path / f"cib{i}.xml"
        path.write_bytes(data)
        argvs.append([rng.choice(["place", "rebalance", "clear"]), "--cib", str(path)])
    fifo = tmp_path / "cib.fifo"
    os.mkfifo(fifo)
    good = tmp_path / "good.xml"
    good.write_bytes(etree.tostring(_cib()))
    out_fifo = tmp_path / "out.fifo"
    os.mkfifo(out_fifo)
    argvs += [["place", "--cib", str(fifo)], ["place", "--cib", "/dev/zero"], ["clear", "--cib", str(tmp_path)],
              ["place", "--cib", str(good), "--write-cib", str(out_fifo)],
              ["place", "--cib", str(good), "--write-cib", str(tmp_path / "absent" / "out.xml")],
              ["place", "--cib", str(good), "--write-cib", str(tmp_path)]]
    with ThreadPoolExecutor(max_workers=4) as pool:
        check(list(pool.map(run, argvs)))


@pytest.mark.parametrize("names", [("vmé", "vmè"), ("vmé", "vm_"), ("élève", "èléve")])
def test_names_that_need_changing_get_distinct_constraint_ids(tmp_path, names):
    require_pacemaker_tools()
    c = Cluster({"n1": Node("n1", 8, 16384)}, {name: VM(name, 1, 1024) for name in names})
    cib = cibgen.live_like_cib(c, "utilization")
    source, out = tmp_path / "cib.xml", tmp_path / "out.xml"
    source.write_bytes(etree.tostring(cib))
    proc = subprocess.run(["/usr/bin/python3", str(TOOL), "place", "--cib", str(source), "--write-cib", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ids = [el.get("id") for el in etree.parse(str(out)).iter("rsc_location")]
    assert len(ids) == len(set(ids)) == 2
    verify = subprocess.run(["crm_verify", "--xml-file", str(out)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
