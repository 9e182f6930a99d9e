"""resource-agents' ocf-tester against the agent with a real VM, and pcs reading our metadata."""
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from support.libvirt_node import AGENT, AGENT_DIR, REPO, domain_xml
from support.stack import require_stack

pytestmark = pytest.mark.libvirt

# ocf-tester checks metadata against the OCF 1.0 DTD, which has no place for OCF 1.1's
# reloadable / unique-group / reload-agent; that is the one check an OCF 1.1 agent cannot pass.
DTD_FAILURE = "Your agent produces meta-data which does not conform to ra-api-1.dtd"


def test_ocf_tester_behavioural_checks_pass_with_a_real_vm(node, tmp_path):
    require_stack("ocf-tester", "ocf-tester", "xmllint")
    config = tmp_path / "ocftester.xml"
    config.write_text(domain_xml("ocftester"))
    # ocf-tester runs meta-data as nobody: give it a world-readable copy of the tree's agent
    # (an installed agent and its library are world-readable already).
    tree = tempfile.mkdtemp(prefix="ravada-ocft-")
    try:
        agent = AGENT
        if AGENT_DIR == os.path.join(REPO, "agents"):
            shutil.copytree(AGENT_DIR, os.path.join(tree, "agents"))
            shutil.copytree(os.path.join(REPO, "lib"), os.path.join(tree, "lib"),
                            ignore=shutil.ignore_patterns("__pycache__"))
            subprocess.run(["chmod", "-R", "a+rX", tree], check=True)
            agent = os.path.join(tree, "agents", "VirtualDomain")
        done = subprocess.run(
            ["ocf-tester", "-n", "ocftester", "-o", f"config={config}", "-o", f"hypervisor={node.uri}",
             "-o", "force_stop=1", agent],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "HA_RSCTMP": str(tmp_path / "rsctmp")})
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    failures = re.findall(r"^\* rc=(\d+): (.*)$", done.stdout, re.MULTILINE)
    real_failures = [f for f in failures if "(optional)" not in f[1] and f[1] != DTD_FAILURE]
    assert real_failures == [], done.stdout
    assert "reload action (optional)" in done.stdout  # its last check: it ran to the end
    assert "failed 1 tests" in done.stdout + done.stderr
    conn = node.connect()
    try:
        assert "ocftester" not in [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()


def test_pcs_describes_the_agent_without_warnings(tmp_path):
    require_stack("pcs", "pcs")
    ocf_root = tmp_path / "ocf"
    provider = ocf_root / "resource.d" / "ravada"
    provider.mkdir(parents=True)
    wrapper = provider / "VirtualDomain"
    # The agent as installed, but run from this tree.
    wrapper.write_text(f"#!/bin/sh\nexec /usr/bin/python3 {AGENT} \"$@\"\n")
    wrapper.chmod(0o755)
    done = subprocess.run(["pcs", "resource", "describe", "ocf:ravada:VirtualDomain"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OCF_ROOT": str(ocf_root)})
    if "ravada" not in done.stdout and "not found" in done.stderr.lower():
        pytest.fail("pcs did not honour OCF_ROOT: " + done.stderr)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "Error" not in done.stderr, done.stderr
    assert "migration_speed" in done.stdout and "reload-agent" in done.stdout
