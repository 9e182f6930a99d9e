"""`make install` lays out a working installation (DESTDIR/PREFIX/OCF_ROOT aware)."""
import os
import subprocess

from lxml import etree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_make_install_into_destdir_gives_agents_that_run_from_the_installed_library(tmp_path):
    dest = tmp_path / "root"
    pylib = "/opt/ravada/python"
    subprocess.run(["make", "-s", "-C", REPO, "install", f"DESTDIR={dest}", "OCF_ROOT=/usr/lib/ocf",
                    f"PYLIBDIR={pylib}"], check=True, capture_output=True)
    agent = dest / "usr/lib/ocf/resource.d/ravada/VirtualDomain"
    assert os.access(agent, os.X_OK)
    assert (dest / "usr/sbin/fence_rbd").exists() and (dest / "usr/sbin/ravada-lab").exists()
    assert (dest / pylib.lstrip("/") / "ocf_ravada/vdomain/agent.py").exists()
    # The installed agent looks for the library where it was installed (DESTDIR is only a
    # staging root, so point LIBRARY_DIR there for this run).
    text = agent.read_text().replace(f'LIBRARY_DIR = "{pylib}"', f'LIBRARY_DIR = "{dest}{pylib}"')
    assert text != agent.read_text(), "make install must record PYLIBDIR in the agent"
    agent.write_text(text)
    done = subprocess.run([str(agent), "meta-data"], capture_output=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert etree.fromstring(done.stdout).get("name") == "VirtualDomain"
