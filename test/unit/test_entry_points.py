"""One sys.path bootstrap for every agent and admin tool: the same block, and it works from
the tree, from an install with its own library directory, and under python3 -S."""
import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = ["agents/VirtualDomain", "agents/nodeinfo", "agents/basesync", "tools/fence_rbd", "tools/ravada-rbd",
           "tools/ravada-cib", "tools/ravada-node", "tools/ravada-cluster", "tools/ravada-snapshot",
           "tools/ravada-backup", "tools/ravada-basesync", "alerts/ravada_alert"]
BLOCK = re.compile(r"^# -- sys\.path bootstrap.*?^# -- end of bootstrap -+$", re.S | re.M)


def _block(path: str) -> str:
    with open(os.path.join(REPO, path), encoding="utf-8") as handle:
        found = BLOCK.findall(handle.read())
    assert len(found) == 1, f"{path} has no (or more than one) bootstrap block"
    return found[0]


def test_every_entry_point_has_the_same_bootstrap():
    reference = _block(SCRIPTS[0])
    assert all(_block(path) == reference for path in SCRIPTS[1:])


@pytest.mark.parametrize("script, argv", [("agents/VirtualDomain", ["meta-data"]),
                                          ("agents/nodeinfo", ["meta-data"]),
                                          ("agents/basesync", ["meta-data"]),
                                          ("tools/fence_rbd", ["-o", "metadata"]),
                                          ("tools/ravada-rbd", ["--help"]),
                                          ("tools/ravada-cib", ["--help"]),
                                          ("tools/ravada-node", ["--help"]),
                                          ("tools/ravada-cluster", ["--help"]),
                                          ("tools/ravada-snapshot", ["--help"]),
                                          ("tools/ravada-backup", ["--help"]),
                                          ("tools/ravada-basesync", ["--help"]),
                                          ("alerts/ravada_alert", [])])
def test_installed_elsewhere_the_script_finds_its_library(tmp_path, script, argv):
    pylib = tmp_path / "pylib"
    shutil.copytree(os.path.join(REPO, "lib", "ocf_ravada"), pylib / "ocf_ravada",
                    ignore=shutil.ignore_patterns("__pycache__"))
    init = pylib / "ocf_ravada" / "__init__.py"
    init.write_text(re.sub(r'(?m)^__version__ = .*$', '__version__ = "9.9.9"', init.read_text()))
    installed = tmp_path / "sbin" / os.path.basename(script)
    installed.parent.mkdir()
    with open(os.path.join(REPO, script), encoding="utf-8") as handle:
        # What make install does to agents (PYLIBDIR recorded in the script).
        text = re.sub(r"(?m)^LIBRARY_DIR = .*$", f'LIBRARY_DIR = "{pylib}"', handle.read())
    installed.write_text(text)
    installed.chmod(0o755)
    done = subprocess.run([str(installed), *argv], capture_output=True, text=True, cwd="/", timeout=30,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    if script.startswith("agents/"):
        assert 'version="9.9.9"' in done.stdout   # the installed copy, not the tree or another
