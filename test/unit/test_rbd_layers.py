"""Who owns what around Ceph: the Ceph package (ocf_ravada.rbd) knows nothing of OCF -- the VM
agent declares the Ceph parameters and maps the package's errors to exit codes."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

RBD = Path(__file__).resolve().parents[2] / "lib" / "ocf_ravada" / "rbd"
OCF_MODULES = {"ocf", "params", "agent", "vdomain", "nodeinfo"}


def imported_modules(path: Path) -> set[str]:
    """Names of the ocf_ravada modules `path` imports (relative imports resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 2 or (node.module or "").startswith("ocf_ravada"):
                base = (node.module or "").removeprefix("ocf_ravada.").split(".")[0]
                found |= {base} if base else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ocf_ravada.")}
    return found


@pytest.mark.parametrize("path", sorted(RBD.glob("*.py")), ids=lambda p: p.name)
def test_the_ceph_package_imports_nothing_of_ocf(path):
    assert not imported_modules(path) & OCF_MODULES


def test_the_agents_policy_choices_are_the_guards_policies():
    pytest.importorskip("rados", reason="python3-rados (Debian's /usr/bin/python3)")
    from ocf_ravada.rbd.guard import Policy
    from ocf_ravada.vdomain.rbdparams import POLICIES

    assert POLICIES == tuple(p.value for p in Policy)
