"""`make deb`: two Debian packages, lintian-clean, production and test tooling apart.

The packages are built in a copy of the tree (the way `make deb` always builds), lintian runs
on them, and their file lists, relations and contents are checked: the agents and pages in
the package work from the package's own files.
"""
from __future__ import annotations

import configparser
import os
import re
import subprocess
from pathlib import Path

import pytest

from support.stack import require_stack

TOP = Path(__file__).resolve().parents[2]
DIST = "usr/lib/python3/dist-packages"


def version() -> str:
    config = configparser.ConfigParser()
    config.read(TOP / "setup.cfg")
    return config["metadata"]["version"]


def test_the_debian_version_is_the_project_version():
    first = (TOP / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(rf"ocf-ravada \({re.escape(version())}(-\d+)?\) ", first), first


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> dict[str, Path]:
    require_stack("Debian packaging", "dpkg-buildpackage", "dh", "dh_python3", "lintian", "git")
    build = tmp_path_factory.mktemp("deb")
    done = subprocess.run(["make", "-C", str(TOP), "deb", f"DEBBUILD={build}"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = {p.name.split("_")[0]: p for p in build.glob("*.deb")}
    assert set(found) == {"ocf-ravada", "ocf-ravada-lab"}, found
    return found


def contents(deb: Path) -> set[str]:
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                             check=True).stdout
    names = subprocess.run(["tar", "-tf", "-"], input=listing, capture_output=True,
                           check=True).stdout.decode().split("\n")
    return {n.removeprefix("./") for n in names if n and not n.endswith("/")}


def field(deb: Path, name: str) -> set[str]:
    value = subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                           check=True).stdout
    return {re.sub(r"\s*\(.*\)", "", p).strip() for p in value.split(",") if p.strip()}


@pytest.mark.slow
def test_lintian_finds_no_error(debs):
    changes = next(debs["ocf-ravada"].parent.glob("*.changes"))
    done = subprocess.run(["lintian", str(changes)], capture_output=True, text=True, timeout=600)
    errors = [line for line in done.stdout.splitlines() if line.startswith("E:")]
    assert not errors, done.stdout


@pytest.mark.slow
def test_production_package_holds_agents_tools_library_and_pages_but_no_lab(debs):
    files = contents(debs["ocf-ravada"])
    assert {"usr/lib/ocf/resource.d/ravada/VirtualDomain", "usr/lib/ocf/resource.d/ravada/nodeinfo",
            "usr/sbin/fence_rbd", "usr/sbin/ravada-place", "usr/sbin/ravada-rbd",
            f"{DIST}/ocf_ravada/agent.py", f"{DIST}/ravada_placement/cli.py",
            "usr/share/man/man7/ocf_ravada_VirtualDomain.7.gz",
            "usr/share/man/man7/ocf_ravada_nodeinfo.7.gz", "usr/share/man/man8/fence_rbd.8.gz",
            "usr/share/man/man8/ravada-place.8.gz", "usr/share/man/man8/ravada-rbd.8.gz"} <= files
    lab = [f for f in files if "lab" in Path(f).name.split(".")[0] or "ravada_lab" in f]
    assert not lab, lab
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert {"python3-libvirt", "python3-lxml", "python3-psutil", "pacemaker-cli-utils",
            "python3:any"} <= field(debs["ocf-ravada"], "Depends")
    assert {"python3-rados", "python3-rbd"} <= field(debs["ocf-ravada"], "Recommends")


@pytest.mark.slow
def test_lab_package_holds_the_lab_only(debs):
    files = contents(debs["ocf-ravada-lab"])
    assert {"usr/sbin/ravada-lab", "usr/sbin/fence_ravada_lab", f"{DIST}/ravada_lab/holder.py",
            "usr/share/man/man8/ravada-lab.8.gz",
            "usr/share/man/man8/fence_ravada_lab.8.gz"} <= files
    assert not files & contents(debs["ocf-ravada"])
    assert not [f for f in files if f.startswith((f"{DIST}/ocf_ravada/", "usr/lib/ocf/"))]
    assert {"ocf-ravada", "corosync", "pacemaker", "pcs", "libvirt-daemon-system",
            "qemu-system-x86", "iproute2"} <= field(debs["ocf-ravada-lab"], "Depends")


@pytest.mark.slow
def test_packaged_agent_and_page_work_from_the_package_files(debs, tmp_path):
    root = tmp_path / "root"
    for deb in debs.values():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    agent = root / "usr/lib/ocf/resource.d/ravada/VirtualDomain"
    assert 'LIBRARY_DIR = "/usr/lib/python3/dist-packages"' in agent.read_text()
    # The packaged library first on the path: the agent runs from the package alone.
    program = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); agent = sys.argv[2]; "
               "sys.argv = [agent, 'meta-data']; runpy.run_path(agent, run_name='__main__')")
    done = subprocess.run(["/usr/bin/python3", "-S", "-c", program, str(root / DIST), str(agent)],
                          capture_output=True, text=True, cwd="/", timeout=60)
    assert done.returncode == 0 and '<resource-agent name="VirtualDomain"' in done.stdout, \
        done.stderr
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANROFFSEQ": "", "MANWIDTH": "80"}
    for page in ("man7/ocf_ravada_VirtualDomain.7.gz", "man8/fence_rbd.8.gz",
                 "man8/ravada-lab.8.gz"):
        shown = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z",
                                str(root / "usr/share/man" / page)],
                               capture_output=True, text=True, env=env, timeout=60)
        assert shown.returncode == 0 and shown.stderr == "", (page, shown.stderr)
