"""Both admin shells, crm (crmsh) and pcs as Debian ships them, read and configure every agent.

Both ask Pacemaker's `crm_resource --show-metadata`, which finds OCF agents only under
/usr/lib/ocf/resource.d and fence agents only in /usr/sbin (no environment variable moves
them).  So the tree is installed with `make install install-lab DESTDIR=...` and that staging
root is laid over the host's directories with read-only overlays in a private mount namespace:
crm sees an installed system, the host's files stay untouched.  The CIB is a file (CIB_file),
so no cluster has to run; `crm configure` and `pcs -f` commit into it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from support.stack import require_stack

TOP = Path(__file__).resolve().parents[2]
OVERLAID = ("/usr/lib/ocf/resource.d", "/usr/sbin", "/usr/lib/python3/dist-packages")
# Mounts the overlays, then runs the command given as arguments (never through the shell).
IN_INSTALLED = ('set -e; root="$1"; shift; for d in ' + " ".join(OVERLAID) + '; do '
                'mount -t overlay overlay -o "lowerdir=$root$d:$d" "$d"; done; exec "$@"')


class Installed:
    def __init__(self, root: Path, cib: Path):
        self.root, self.cib = root, cib

    def run(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "CIB_file": str(self.cib), "HOME": str(self.cib.parent),
               "TERM": "dumb"}
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "--",
                               "/bin/sh", "-c", IN_INSTALLED, "sh", str(self.root), *argv],
                              input=stdin, capture_output=True, text=True, timeout=120, env=env,
                              cwd="/")

    def crm(self, *args: str, script: str | None = None) -> subprocess.CompletedProcess:
        if script is None:
            return self.run("crm", *args)
        path = self.cib.parent / "script.crm"
        path.write_text(script)
        return self.run("crm", "-f", str(path))

    def ocf_agents(self) -> list[str]:
        return sorted(p.name for p in (self.root / "usr/lib/ocf/resource.d/ravada").iterdir())

    def fence_agents(self) -> list[str]:
        return sorted(p.name for p in (self.root / "usr/sbin").glob("fence_*"))

    def parameters(self, agent: str) -> list[str]:
        if agent.startswith("stonith:"):
            argv = [str(self.root / "usr/sbin" / agent.split(":")[1]), "-o", "metadata"]
        else:
            argv = [str(self.root / "usr/lib/ocf/resource.d/ravada" / agent.split(":")[2]),
                    "meta-data"]
        done = self.run(*argv)
        assert done.returncode == 0, done.stderr
        return etree.fromstring(done.stdout.encode()).xpath("parameters/parameter/@name")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    require_stack("the admin shells", "crm", "pcs", "crm_resource", "cibadmin", "crm_verify",
                  "unshare", "mount")
    root = tmp_path_factory.mktemp("crmsh-root")
    assert ":" not in str(root) and "," not in str(root)  # overlay option syntax
    subprocess.run(["make", "-s", "-C", str(TOP), "install", "install-lab", f"DESTDIR={root}"],
                   check=True, capture_output=True)
    return Installed(root, root / "cib.xml")


@pytest.fixture()
def empty_cib(installed) -> Installed:
    done = subprocess.run(["cibadmin", "--empty"], capture_output=True, check=True, text=True)
    installed.cib.write_text(done.stdout)
    return installed


def all_agents(installed: Installed) -> list[str]:
    return ([f"ocf:ravada:{a}" for a in installed.ocf_agents()]
            + [f"stonith:{a}" for a in installed.fence_agents()])


def test_every_agent_is_installed_for_crm(installed):
    assert set(installed.ocf_agents()) >= {"VirtualDomain", "nodeinfo"}
    assert set(installed.fence_agents()) >= {"fence_rbd", "fence_ravada_lab"}


def test_crm_ra_info_shows_every_parameter_of_every_agent(installed):
    for agent in all_agents(installed):
        done = installed.crm("ra", "info", agent)
        said = done.stdout + done.stderr
        assert done.returncode == 0 and "ERROR" not in said and "WARNING" not in said, said
        parameters = installed.parameters(agent)
        assert parameters, agent
        shown = {line.split(" (")[0].rstrip("*") for line in done.stdout.splitlines()}
        missing = [p for p in parameters if p not in shown]
        assert not missing, f"crm ra info {agent} does not show {missing}:\n{done.stdout}"


def test_crm_ra_meta_and_list(installed):
    done = installed.crm("ra", "meta", "ocf:ravada:VirtualDomain")  # crmsh: deprecated, = info
    assert done.returncode == 0 and "ERROR" not in done.stdout + done.stderr, done.stderr
    assert "migration_transport" in done.stdout
    listed = installed.crm("ra", "list", "ocf", "ravada")
    assert listed.returncode == 0
    assert set(listed.stdout.split()) >= set(installed.ocf_agents())


# What crmsh's tab completion offers after `params` and after `op` (its own completers).
COMPLETION = """
import json, sys
from crmsh import ra, ui_configure
agent = ra.get_ra(sys.argv[1])
words = ["primitive", "x", sys.argv[1]]
print(json.dumps({
    "params": sorted(ui_configure._prim_params_completer(agent, words + ["params", ""])),
    "hidden": sorted(agent.excluded_from_completion),
    "ops": sorted(ui_configure._prim_op_completer(agent, words + ["op", ""]) or []),
    "start": sorted(ui_configure._prim_op_completer(agent, words + ["op", "start", ""]) or []),
}))
"""


def test_crm_completes_parameters_and_operations_from_our_metadata(installed):
    for agent in all_agents(installed):
        done = installed.run("/usr/bin/python3", "-c", COMPLETION, agent)
        assert done.returncode == 0, done.stderr
        offered = json.loads(done.stdout.splitlines()[-1])
        expected = {f"{p}=" for p in installed.parameters(agent)} - {
            f"{p}=" for p in offered["hidden"]}
        assert set(offered["params"]) == expected, agent
        if agent.startswith("ocf:"):
            assert {"start", "stop", "monitor"} <= set(offered["ops"]), offered
            assert offered["start"] and offered["start"][0].startswith("timeout="), offered


def test_crm_configure_takes_our_primitives_and_verify_is_clean(empty_cib):
    script = """configure
property stonith-enabled=true no-quorum-policy=ignore
primitive storage-fence stonith:fence_rbd \\
    params pcmk_host_list="node1 node2" ceph_id=admin blocklist_expire=3600 \\
    op monitor interval=60s
primitive vm1 ocf:ravada:VirtualDomain \\
    params config=/etc/ravada/vm1.xml migration_transport=ssh shutdown_mode=agent,acpi \\
    op start timeout=90s op stop timeout=90s op monitor interval=30s timeout=30s \\
    meta allow-migrate=true
primitive nodeinfo ocf:ravada:nodeinfo op monitor interval=60s
clone nodeinfo-clone nodeinfo
commit
"""
    done = empty_cib.crm(script=script)
    said = done.stdout + done.stderr  # crmsh prints its warnings on stdout
    assert done.returncode == 0, said
    assert "ERROR" not in said and "WARNING" not in said, said
    verified = empty_cib.crm("configure", "verify")
    said = verified.stdout + verified.stderr
    assert verified.returncode == 0 and "ERROR" not in said and "WARNING" not in said, said
    assert subprocess.run(["crm_verify", "--xml-file", str(empty_cib.cib)]).returncode == 0
    cib = etree.parse(str(empty_cib.cib))
    vm1 = cib.find(".//primitive[@id='vm1']")
    assert (vm1.get("class"), vm1.get("provider"), vm1.get("type")) == ("ocf", "ravada",
                                                                        "VirtualDomain")
    assert cib.xpath("//primitive[@id='vm1']//nvpair[@name='config']/@value") == [
        "/etc/ravada/vm1.xml"]
    assert cib.find(".//clone[@id='nodeinfo-clone']/primitive[@type='nodeinfo']") is not None
    assert cib.find(".//primitive[@id='storage-fence']").get("type") == "fence_rbd"


def test_crm_checks_parameters_and_timeouts_from_our_metadata(empty_cib):
    before = empty_cib.cib.read_text()
    script = """configure
property stonith-enabled=false
primitive vm1 ocf:ravada:VirtualDomain params migration_transport=ssh op start timeout=5s
primitive vm2 ocf:ravada:VirtualDomain params config=/etc/ravada/vm2.xml no_such_param=1
primitive fence2 stonith:fence_rbd params no_such_option=1
commit
"""
    done = empty_cib.crm(script=script)
    said = done.stdout + done.stderr
    assert done.returncode != 0
    assert 'vm1: required parameter "config" not defined' in said, said
    assert "vm1: specified timeout 5s for start is smaller than the advised 90s" in said
    assert 'vm2: parameter "no_such_param" is not known' in said
    assert 'fence2: parameter "no_such_option" is not known' in said
    assert "Cannot parse meta-data" not in said
    assert empty_cib.cib.read_text() == before, "crm committed a configuration it refused"


def test_pcs_describes_every_agent_without_warnings(installed):
    for agent in all_agents(installed):
        kind, name = ("stonith", agent.split(":")[1]) if agent.startswith("stonith:") \
            else ("resource", agent)
        done = installed.run("pcs", kind, "describe", name)
        assert done.returncode == 0, (agent, done.stderr)
        assert "Warning" not in done.stderr and "Error" not in done.stderr, done.stderr
        missing = [p for p in installed.parameters(agent) if p not in done.stdout]
        assert not missing, f"pcs {kind} describe {name} does not show {missing}"


def test_pcs_creates_our_resources_and_refuses_unknown_options(empty_cib):
    cib = str(empty_cib.cib)
    for argv in (["resource", "create", "vm1", "ocf:ravada:VirtualDomain", "config=/etc/vm1.xml",
                  "migration_transport=ssh", "meta", "allow-migrate=true"],
                 ["resource", "create", "nodeinfo", "ocf:ravada:nodeinfo", "clone"],
                 ["stonith", "create", "storage-fence", "fence_rbd", "pcmk_host_list=node1 node2",
                  "ceph_id=admin"]):
        done = empty_cib.run("pcs", "-f", cib, *argv)
        assert done.returncode == 0, (argv, done.stderr)
    assert subprocess.run(["crm_verify", "--xml-file", cib]).returncode == 0
    before = empty_cib.cib.read_text()
    done = empty_cib.run("pcs", "-f", cib, "resource", "create", "vm2",
                         "ocf:ravada:VirtualDomain", "config=/etc/vm2.xml", "no_such_param=1")
    assert done.returncode != 0 and "invalid resource option 'no_such_param'" in done.stderr
    assert empty_cib.cib.read_text() == before
