"""--apply against a CIB that an administrator edits meanwhile (CIB_file: the real cibadmin,
crm_verify and crm_diff on a file, no daemons).  A `cibadmin` wrapper first on PATH makes
the administrator's change exactly between ravada-place's planning and its apply."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from placement_helpers import TOOL, require_pacemaker_tools
from ravada_placement import cibgen
from ravada_placement.model import VM, Cluster, Node

# On the N-th `cibadmin --query` (or every one from the 2nd on, with "every"), the
# administrator bans vm1 from n1 first; the real cibadmin then answers.
WRAPPER = """#!/bin/sh
case " $* " in
*" --query "*)
    n=$(( $(cat "$SHIM_DIR/queries" 2>/dev/null || echo 0) + 1 ))
    echo "$n" > "$SHIM_DIR/queries"
    if [ "$SHIM_EDIT_ON" = "$n" ] || { [ "$SHIM_EDIT_ON" = every ] && [ "$n" -ge 2 ]; }; then
        "$REAL_CIBADMIN" --create --scope constraints --xml-text \\
            "<rsc_location id=\\"admin-ban-$n\\" rsc=\\"vm1\\" node=\\"n1\\" score=\\"-INFINITY\\"/>"
    fi;;
esac
exec "$REAL_CIBADMIN" "$@"
"""

ADMIN = ('<rsc_location id="admin-pref" rsc="vm2" node="n2" score="50" role="Started"/>',
         '<rsc_colocation id="admin-apart" score="-100" rsc="vm3" with-rsc="vm2"/>')


@pytest.fixture()
def cib_file(tmp_path) -> Path:
    require_pacemaker_tools()
    c = Cluster({"n1": Node("n1", 8, 16384), "n2": Node("n2", 8, 8192)},
                {name: VM(name, 1, 2048) for name in ("vm1", "vm2", "vm3")})
    cib = cibgen.live_like_cib(c, "utilization")
    for text in ADMIN:
        cib.find("configuration/constraints").append(etree.fromstring(text))
    path = tmp_path / "cib.xml"
    path.write_bytes(etree.tostring(cib))
    return path


def run(cib_file: Path, tmp_path: Path, *args: str, edit_on: str = "") -> subprocess.CompletedProcess:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "cibadmin").write_text(WRAPPER)
    (shim / "cibadmin").chmod(0o755)
    (shim / "queries").unlink(missing_ok=True)
    env = dict(os.environ, CIB_file=str(cib_file), SHIM_DIR=str(shim), SHIM_EDIT_ON=edit_on,
               REAL_CIBADMIN=shutil.which("cibadmin"), PATH=f"{shim}:{os.environ['PATH']}")
    return subprocess.run(["/usr/bin/python3", str(TOOL), *args], capture_output=True, text=True, env=env,
                          timeout=120)


def constraints(path: Path) -> dict[str, bytes]:
    root = etree.parse(str(path)).getroot()
    return {el.get("id"): etree.tostring(el, method="c14n") for el in root.find("configuration/constraints")}


def version(path: Path) -> tuple[str, str]:
    root = etree.parse(str(path)).getroot()
    return root.get("admin_epoch"), root.get("epoch")


def test_a_change_between_plan_and_apply_makes_it_plan_again(cib_file, tmp_path):
    before = constraints(cib_file)
    # Without interference the largest free node n1 gets vm1 ...
    dry = run(cib_file, tmp_path, "place")
    assert "vm1: n1" in dry.stdout, dry.stdout + dry.stderr
    # ... but the administrator bans vm1 from n1 while ravada-place plans.
    proc = run(cib_file, tmp_path, "place", "--apply", edit_on="2")
    assert proc.returncode == 0, proc.stderr
    assert "changed while planning" in proc.stderr and "planning again" in proc.stderr
    after = constraints(cib_file)
    assert after["ravada-place-vm1"] != before.get("ravada-place-vm1")
    assert b'node="n2"' in after["ravada-place-vm1"] and "admin-ban-2" in after
    for cid, text in before.items():
        assert after[cid] == text               # the admin's constraints, byte for byte


def test_a_configuration_that_keeps_changing_is_refused(cib_file, tmp_path):
    proc = run(cib_file, tmp_path, "place", "--apply", edit_on="every")
    assert proc.returncode == 4
    assert proc.stderr.splitlines()[-1].startswith("ravada-place: pacemaker: the CIB configuration changed")
    assert not any(cid.startswith("ravada-place-") for cid in constraints(cib_file))


def test_apply_and_clear_leave_the_admins_constraints_byte_identical(cib_file, tmp_path):
    before = constraints(cib_file)
    epoch = version(cib_file)
    assert run(cib_file, tmp_path, "place", "--apply").returncode == 0
    applied = constraints(cib_file)
    assert {cid for cid in applied if cid.startswith("ravada-place-")} == {
        "ravada-place-vm1", "ravada-place-vm2", "ravada-place-vm3"}
    assert version(cib_file) != epoch
    proc = run(cib_file, tmp_path, "clear", "--apply")
    assert proc.returncode == 0, proc.stderr
    assert constraints(cib_file) == before
