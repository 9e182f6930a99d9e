"""`make install` lays out a working installation (DESTDIR/PREFIX/OCF_ROOT aware)."""
import os
import subprocess
from pathlib import Path

from lxml import etree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_make_install_into_destdir_gives_agents_that_run_from_the_installed_library(tmp_path):
    dest = tmp_path / "root"
    pylib = "/opt/ravada/python"
    subprocess.run(["make", "-s", "-C", REPO, "install", f"DESTDIR={dest}", "OCF_ROOT=/usr/lib/ocf",
                    f"PYLIBDIR={pylib}"], check=True, capture_output=True)
    agent = dest / "usr/lib/ocf/resource.d/ravada/VirtualDomain"
    assert os.access(agent, os.X_OK)
    assert (dest / "usr/sbin/fence_rbd").exists() and (dest / "usr/sbin/ravada-place").exists()
    assert (dest / pylib.lstrip("/") / "ocf_ravada/vdomain/agent.py").exists()
    # The installed agent looks for the library where it was installed (DESTDIR is only a
    # staging root, so point LIBRARY_DIR there for this run).
    text = agent.read_text().replace(f'LIBRARY_DIR = "{pylib}"', f'LIBRARY_DIR = "{dest}{pylib}"')
    assert text != agent.read_text(), "make install must record PYLIBDIR in the agent"
    agent.write_text(text)
    done = subprocess.run([str(agent), "meta-data"], capture_output=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert etree.fromstring(done.stdout).get("name") == "VirtualDomain"


def _installed(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_make_install_ships_no_lab_and_install_lab_ships_only_the_lab(tmp_path):
    prod, lab = tmp_path / "prod", tmp_path / "lab"
    for dest, targets in ((prod, ["install"]), (lab, ["install-lab"])):
        subprocess.run(["make", "-s", "-C", REPO, *targets, f"DESTDIR={dest}"], check=True,
                       capture_output=True)
    production, lab_files = _installed(prod), _installed(lab)
    assert {"usr/sbin/fence_rbd", "usr/share/man/man7/ocf_ravada_VirtualDomain.7",
            "usr/share/man/man8/fence_rbd.8", "usr/share/man/man8/ravada-place.8"} <= production
    assert not [f for f in production if "lab" in Path(f).name or "/ravada_lab/" in f], production
    assert {"usr/sbin/ravada-lab", "usr/sbin/fence_ravada_lab",
            "usr/lib/python3/dist-packages/ravada_lab/holder.py",
            "usr/share/man/man8/ravada-lab.8", "usr/share/man/man8/fence_ravada_lab.8"} <= lab_files
    assert not production & lab_files
    # The installed lab commands run from the installed packages alone (no source tree).
    both = tmp_path / "both"
    subprocess.run(["make", "-s", "-C", REPO, "install", "install-lab", f"DESTDIR={both}"],
                   check=True, capture_output=True)
    program = ("import sys; sys.path[:0] = [sys.argv[1], '/usr/lib/python3/dist-packages']; "
               "sys.argv = ['fence_ravada_lab', '-o', 'metadata']; "
               "from ravada_lab.fence import main; sys.exit(main())")
    library = str(both / "usr/lib/python3/dist-packages")
    done = subprocess.run(["/usr/bin/python3", "-S", "-c", program, library], capture_output=True,
                          cwd="/")
    assert done.returncode == 0, done.stderr
    assert etree.fromstring(done.stdout).get("name") == "fence_ravada_lab"


def test_reinstall_removes_modules_an_older_install_left_behind(tmp_path):
    """An upgrade over an install that still had the lab inside ocf_ravada, and a removed
    module: neither stays importable; the package itself is updated in place, not removed."""
    dest = tmp_path / "root"
    make = ["make", "-s", "-C", REPO, "install", f"DESTDIR={dest}"]
    subprocess.run(make, check=True, capture_output=True)
    package = dest / "usr/lib/python3/dist-packages/ocf_ravada"
    stale = [package / "lab/__init__.py", package / "lab/fence.py", package / "gone.py"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_text("raise ImportError('stale')\n")
    (package / "lab/__pycache__").mkdir()
    (package / "lab/__pycache__/fence.cpython-311.pyc").write_bytes(b"")
    directory = package.stat().st_ino
    subprocess.run(make, check=True, capture_output=True)
    assert not [p for p in stale if p.exists()] and not (package / "lab").exists()
    assert (package / "agent.py").exists() and (package / "vdomain/agent.py").exists()
    assert package.stat().st_ino == directory, "the package directory was replaced, not updated"
