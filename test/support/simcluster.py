"""A Pacemaker cluster simulated on a CIB file: ravada-cib builds the configuration,
crm_simulate runs the scheduler's transitions (start, stop, live migration) in place, so
$CIB_file users (crm_mon, crm_resource, cibadmin) see the outcome as on a live cluster."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lxml import etree

REPO = Path(__file__).resolve().parents[2]
CIB_TOOL = REPO / "tools" / "ravada-cib"


class SimCluster:
    def __init__(self, directory: Path, nodes: dict[str, tuple[int, int] | None],
                 placement_strategy: str = "balanced") -> None:
        """nodes: name -> (cpu, hv_memory MiB) offered to VMs, or None: no utilization."""
        self.path = directory / "cib.xml"
        self.nodes = list(nodes)
        cib = etree.fromstring(subprocess.run(["cibadmin", "--empty"], capture_output=True, check=True).stdout)
        cib.set("have-quorum", "1")
        for number, name in enumerate(nodes, 1):
            node = etree.SubElement(cib.find("configuration/nodes"), "node", id=str(number), uname=name)
            if nodes[name] is None:
                continue
            cpu, memory = nodes[name]
            util = etree.SubElement(node, "utilization", id=f"nodes-{number}-utilization")
            etree.SubElement(util, "nvpair", id=f"nodes-{number}-utilization-cpu", name="cpu", value=str(cpu))
            etree.SubElement(util, "nvpair", id=f"nodes-{number}-utilization-hv_memory", name="hv_memory",
                             value=str(memory))
        self.path.write_bytes(etree.tostring(cib))
        self.cib_tool("cluster-options", "stonith_enabled=false", f"placement_strategy={placement_strategy}")

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CIB_file": str(self.path)}

    def cib_tool(self, template: str, *values: str) -> None:
        done = subprocess.run(["/usr/bin/python3", str(CIB_TOOL), "render", template, *values, "--apply"],
                              capture_output=True, text=True, env=self.env, timeout=120)
        assert done.returncode == 0, done.stderr

    def add_vm(self, name: str, memory: int, cpu: int = 1, priority: int = 0, *extra: str) -> None:
        self.cib_tool("vm", f"id={name}", f"config=/etc/libvirt/qemu/{name}.xml", f"memory={memory}",
                      f"cpu={cpu}", f"priority={priority}", *extra)

    def settle(self, *node_changes: str) -> None:
        """Run the scheduler's transition on the file (with --node-up/--node-down changes)."""
        argv = ["crm_simulate", "--xml-file", str(self.path), "--simulate", "--save-output", str(self.path)]
        for change in node_changes:
            argv += change.split()
        subprocess.run(argv, capture_output=True, check=True, timeout=120)

    def start(self) -> None:
        self.settle(*[f"--node-up {n}" for n in self.nodes])

    def cib(self) -> etree._Element:
        return etree.parse(str(self.path)).getroot()

    def where(self) -> dict[str, list[str]]:
        """Resource id -> nodes it is active on (crm_mon's view of the file)."""
        out = subprocess.run(["crm_mon", "--one-shot", "--inactive", "--output-as=xml"], capture_output=True,
                             check=True, env=self.env).stdout
        status = etree.fromstring(out)
        return {r.get("id"): [n.get("name") for n in r.iterfind("node")]
                for r in status.iter("resource") if r.get("active") == "true"}
