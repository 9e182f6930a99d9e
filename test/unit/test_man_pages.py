"""The manual pages `make install` / `make install-lab` build: clean roff, every parameter.

Pages are checked the way Debian's lintian checks them (man --warnings, lexgrog) and their text
is compared with what the programs themselves declare: the agents' metadata and the commands'
--help.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

TOP = Path(__file__).resolve().parents[2]
# Expected pages, and the sub-commands each command's page must describe.
OCF_PAGES = {"man7/ocf_ravada_VirtualDomain.7": "agents/VirtualDomain",
             "man7/ocf_ravada_nodeinfo.7": "agents/nodeinfo",
             "man7/ocf_ravada_basesync.7": "agents/basesync"}
FENCE_PAGES = {"man8/fence_rbd.8": "tools/fence_rbd",
               "man8/fence_ravada_lab.8": "lab/fence_ravada_lab"}
COMMAND_PAGES = {"man8/ravada-place.8": ("tools/ravada-place",
                                         ["place", "drain", "rebalance", "clear"]),
                 "man8/ravada-rbd.8": ("tools/ravada-rbd",
                                       ["status", "release", "whoami", "publish"]),
                 "man8/ravada-snapshot.8": ("tools/ravada-snapshot",
                                            ["create", "list", "delete", "thaw"]),
                 "man8/ravada-backup.8": ("tools/ravada-backup", ["export", "verify", "restore"]),
                 "man8/ravada-cib.8": ("tools/ravada-cib", ["list", "render"]),
                 "man8/ravada-basesync.8": ("tools/ravada-basesync", ["add", "remove", "show"]),
                 "man8/ravada-node.8": ("tools/ravada-node", ["drain", "undrain", "shutdown", "wake"]),
                 "man8/ravada-cluster.8": ("tools/ravada-cluster", ["emergency-shutdown", "resume"]),
                 "man8/ravada-lab.8": ("lab/ravada-lab",
                                       ["up", "down", "status", "exec", "kill", "on", "freeze",
                                        "thaw", "cut", "heal"])}
ALL_PAGES = [*OCF_PAGES, *FENCE_PAGES, *COMMAND_PAGES]


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    if shutil.which("man") is None or shutil.which("lexgrog") is None:
        pytest.skip("man-db is not installed")
    build = tmp_path_factory.mktemp("man")
    subprocess.run(["make", "-s", "-C", str(TOP), "man", "man-lab", f"MANBUILD={build}"],
                   check=True, capture_output=True)
    return build


def text_of(page: Path) -> str:
    done = subprocess.run(["groff", "-man", "-Tutf8", "-P-cbou", "-rLL=200n", str(page)],
                          capture_output=True, text=True, check=True)
    return done.stdout


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_pages_of_the_rbd_tools_build_on_a_node_without_ceph_bindings(pages, tmp_path):
    """make install works where python3-rados/python3-rbd are not installed (no RBD disks)."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for binding in ("rados", "rbd"):
        (hidden / f"{binding}.py").write_text("raise ImportError('not installed here')\n")
    build = tmp_path / "man"
    done = subprocess.run(["make", "-s", "-C", str(TOP), "man", f"MANBUILD={build}"],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(hidden)})
    assert done.returncode == 0, done.stderr
    for name in ("man8/fence_rbd.8", "man8/ravada-rbd.8"):
        assert (build / name).read_text().split("\n")[1:] == \
            (pages / name).read_text().split("\n")[1:], name


def test_every_page_is_built(pages):
    built = {str(p.relative_to(pages)) for p in pages.rglob("*") if p.is_file()}
    assert built == set(ALL_PAGES)


@pytest.mark.parametrize("name", ALL_PAGES)
def test_page_renders_without_warnings_and_has_a_whatis_entry(pages, name):
    page = pages / name
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANROFFSEQ": "", "MANWIDTH": "80"}
    # lintian's own check (manpage-has-errors-from-man)
    done = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    whatis = subprocess.run(["lexgrog", str(page)], capture_output=True, text=True)
    program = Path(name).stem
    assert whatis.returncode == 0, whatis.stdout + whatis.stderr
    assert f': "{program} - ' in whatis.stdout
    section = Path(name).suffix[1:]
    title = program.upper().replace("-", "\\-")
    assert page.read_text().startswith(f'.TH "{title}" {section} ')


@pytest.mark.parametrize("name", OCF_PAGES)
def test_ocf_page_lists_every_parameter_and_action(pages, name):
    agent = etree.fromstring(run(str(TOP / OCF_PAGES[name]), "meta-data").encode())
    text = text_of(pages / name)
    items = {line.strip().split(" ")[0] for line in text.splitlines()
             if line.startswith("       ") and not line.startswith("        ")}
    parameters = agent.xpath("parameters/parameter/@name")
    assert parameters and not set(parameters) - items, set(parameters) - items
    actions = set(agent.xpath("actions/action/@name"))
    assert not actions - items, actions - items
    assert f"ocf:ravada:{agent.get('name')}" in text  # the crm and pcs examples


@pytest.mark.parametrize("name", FENCE_PAGES)
def test_fence_page_lists_every_option_and_stdin_parameter(pages, name):
    agent = etree.fromstring(run(str(TOP / FENCE_PAGES[name]), "-o", "metadata").encode())
    text = text_of(pages / name)
    stdin = text.split("STDIN PARAMETERS", 1)[1]
    for param in agent.xpath("parameters/parameter"):
        assert re.search(rf"^\s+{re.escape(param.get('name'))}\b", stdin, re.MULTILINE), \
            param.get("name")
        getopt = param.find("getopt")
        if getopt is not None:
            assert getopt.get("mixed") in text
    for action in agent.xpath("actions/action/@name"):
        assert re.search(rf"^\s+{re.escape(action)}\b", text, re.MULTILINE), action


def options_in_help(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", help_text.split("\n", 1)[1]))


@pytest.mark.parametrize("name", COMMAND_PAGES)
def test_command_page_describes_every_command_and_option(pages, name):
    program, commands = COMMAND_PAGES[name]
    text = text_of(pages / name)
    command_section = text.split("\nCOMMANDS\n", 1)[1]
    wanted = options_in_help(run(str(TOP / program), "--help"))
    for command in commands:
        assert re.search(rf"^   {command}$", command_section, re.MULTILINE), command
        wanted |= options_in_help(run(str(TOP / program), command, "--help"))
    missing = {option for option in wanted if option not in text}
    assert not missing, missing
