"""`ravada-lab tour`: every command it shows parses, names a command that exists, and uses
only options that command has; the timings it reports are read right from real log lines.

Options are checked against the real tools (the parsers of ravada-lab, ravada-place and
ravada-rbd; the help of crm_mon, crm_resource, stonith_admin, virsh and grep), and the pcs
commands that change the configuration are run by pcs against a CIB file. The end-to-end run
of the tour is `ravada-lab tour --no-pause` in a demo lab (doc/lab.md).
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from ocf_ravada.rbd import cli as rbd_cli
from ravada_lab import ceph_service, cli as lab_cli, tour
from ravada_lab.layout import LabLayout
from ravada_placement import cli as place_cli
from support.stack import require_stack

TOP = Path(__file__).resolve().parents[2]
NODES = ["node1", "node2", "node3"]
PLACEMENT = {"vm1": "node2", "vm2": "node3", "vm3": "node1"}
# Help text that lists a tool's options (pcs is checked by running it on a CIB file).
HELP = {"crm_mon": ["--help-all"], "crm_resource": ["--help-all"],
        "stonith_admin": ["--help-all"], "grep": ["--help"]}


def make_tour(tmp_path: Path, ceph: bool, name: str = "demo") -> list[tour.Step]:
    lab = LabLayout.for_lab(name, tmp_path)
    return tour.steps(lab, NODES, PLACEMENT, ceph)


def all_commands(steps: list[tour.Step]) -> list[tour.Command]:
    return [c for s in steps for c in (*s.commands, *s.then)]


def host_and_node_argv(command: tour.Command, lab_name: str) -> list[str]:
    """The command a user runs (ravada-lab's own parser checks its part), unwrapped from
    `ravada-lab exec NODE --` when it runs inside a node."""
    argv = list(command.argv)
    if argv[0] != "ravada-lab":
        return argv
    args = lab_cli.build_parser().parse_args(argv[1:])
    assert args.name == lab_name, f"{command.line}: not aimed at lab {lab_name}"
    if args.command != "exec":
        return []
    assert args.node in NODES and "--" in argv, command.line
    return args.argv[1:] if args.argv[0] == "--" else args.argv


@pytest.mark.parametrize("ceph", [False, True], ids=["plain", "ceph"])
def test_every_command_exists_and_parses(tmp_path, ceph):
    require_stack("the tour's commands", "pcs", "crm_mon", "crm_resource", "stonith_admin",
                  "virsh", "grep")
    steps = make_tour(tmp_path, ceph)
    checked = 0
    for command in all_commands(steps):
        argv = host_and_node_argv(command, "demo")
        if not argv:
            continue
        tool = argv[0]
        if tool.startswith(("ravada-", "fence_")):
            assert (TOP / "tools" / tool).exists(), f"{command.line}: {tool} is not ours"
        else:
            assert shutil.which(tool), f"{command.line}: {tool} not installed"
        if tool == "ravada-place":
            place_cli.build_parser().parse_args(argv[1:])
        elif tool == "ravada-rbd":
            rbd_cli.parse_args(argv[1:])
        elif tool == "virsh":
            help_text = run(["virsh", "help", argv[1]]).stdout
            assert all(o in help_text for o in argv[2:] if o.startswith("--")), command.line
        elif tool in HELP:
            help_text = run([tool, *HELP[tool]]).stdout
            for option in options(argv[1:]):
                assert option in help_text, f"{command.line}: {option}?"
        checked += 1
    assert checked >= (14 if ceph else 11)


@pytest.mark.parametrize("ceph", [False, True], ids=["plain", "ceph"])
def test_pcs_commands_of_the_placement_step_apply_to_a_cib(tmp_path, ceph):
    """pcs itself takes the create (validating the agent's parameters), enable and
    constraint lines, on an empty CIB file."""
    require_stack("pcs on a CIB file", "pcs", "cibadmin")
    agent = Path("/usr/lib/ocf/resource.d/ravada/VirtualDomain")
    if not agent.exists():
        pytest.skip("the agent is not installed (make install)")
    cib = tmp_path / "cib.xml"
    cib.write_text(run(["cibadmin", "--empty"]).stdout)
    (step,) = [s for s in make_tour(tmp_path, ceph) if s.title.startswith("Placement")]
    pcs = [host_and_node_argv(c, "demo") for c in (*step.commands, *step.then)]
    pcs = [argv for argv in pcs if argv[0] == "pcs"]
    assert [argv[1:3] for argv in pcs] == [["resource", "create"], ["resource", "enable"],
                                          ["constraint", "location"]]
    for argv in pcs:
        result = run(["pcs", "-f", str(cib), *argv[1:]])
        assert result.returncode == 0, f"{argv}: {result.stderr}"
    created = cib.read_text()
    assert 'id="vm4"' in created
    assert ("ceph_conf" in created) == ceph, "vm4 runs on an RBD disk only with Ceph"


def test_only_the_ceph_tour_has_the_refused_second_start(tmp_path):
    plain, ceph = make_tour(tmp_path, False), make_tour(tmp_path, True)
    assert not [c for c in all_commands(plain) if c.refused]
    (refused,) = [c for c in all_commands(ceph) if c.refused]
    # On another node than the one vm1 migrated to (node2 -> node3).
    assert refused.argv[:2] == ("ravada-lab", "exec")
    assert refused.argv[-5:] == ("--", "crm_resource", "--resource", "vm1", "--force-start")
    assert refused.argv[-6] == "node2"
    titles = [s.title for s in ceph]
    assert titles.index("RBD safety: a second start of vm1's disk is refused") \
        < titles.index("Power cut: node3 dies")


def test_default_lab_commands_carry_no_lab_options(tmp_path):
    default = tour.steps(LabLayout.for_lab("lab"), NODES, PLACEMENT, False)
    assert all("--name" not in c.argv and "--root" not in c.argv for c in all_commands(default))


def test_render_lists_every_step_and_command(tmp_path):
    steps = make_tour(tmp_path, True)
    text = tour.render(steps)
    for step in steps:
        assert step.title in text
    for command in all_commands(steps):
        assert f"$ {command.line}" in text
    assert steps[-1].title == "Tear down" and not steps[-1].run


def test_a_lab_without_the_demo_vms_has_no_tour(tmp_path):
    with pytest.raises(tour.LabError, match="vm1 is not running"):
        tour.steps(LabLayout.for_lab("demo", tmp_path), NODES, {}, False)


def test_fencing_timings_from_pacemaker_and_monitor_logs(tmp_path):
    """Lines as Pacemaker 2.1 and Ceph's monitor write them (from a tour run)."""
    lab = LabLayout.for_lab("demo", tmp_path)
    year = datetime.now().year
    killed = datetime(year, 11, 30, 23, 14, 57, 580000).timestamp()
    for node, lines in {
        "node2": ["Nov 30 23:15:01.652 node2 pacemaker-fenced    [58] (log_async_result) \tnotice: "
                  "Operation 'off' [416] targeting node1 using rbd-fence returned 0 | call 9"],
        "node3": ["Nov 30 23:15:01.328 node3 pacemaker-fenced    [59] (log_async_result) \tnotice: "
                  "Operation 'off' [424] targeting node1 using lab-fence returned 0 | call 9",
                  "Nov 30 23:15:02.288 node3 pacemaker-fenced    [59] (log_async_result) \tnotice: "
                  "Operation 'on' [425] targeting node1 using lab-fence returned 0 | call 9"],
    }.items():
        log = lab.root / "nodes" / node / "fs" / "var-log-pacemaker" / "pacemaker.log"
        log.parent.mkdir(parents=True)
        log.write_text("\n".join(lines) + "\n")
    mon_log = lab.shared_dir / "ceph" / "log" / "mon.a.log"
    mon_log.parent.mkdir(parents=True)
    mon_log.write_text(
        "2026-11-30T23:15:01.632+0000 7f04 0 log_channel(audit) log [INF] : from='client.? "
        "10.99.0.2:0/1058225910' entity='client.fence' cmd='[{\"prefix\": \"osd blocklist\", "
        "\"blocklistop\": \"add\", \"addr\": \"10.99.0.1:0/0\", \"expire\": 157784760.0}]': "
        "finished\n"
        "2026-11-30T23:15:06.920+0000 7f04 0 log_channel(audit) log [INF] : from='client.? "
        "10.99.0.3:0/4204663409' entity='client.fence' cmd='[{\"prefix\": \"osd blocklist\", "
        "\"blocklistop\": \"rm\", \"addr\": \"10.99.0.1:0/0\"}]': finished\n"
        .replace("2026", str(year)))
    assert tour._unfenced(lab, "10.99.0.1:0/0") and not tour._unfenced(lab, "10.99.0.2:0/0")
    ceph_service.service_file(lab).parent.mkdir(parents=True, exist_ok=True)
    run_marks = tour.Run(lab, started=killed, reached=killed + 7.9)
    lines = tour._fencing_timings(run_marks, "node1", ceph=True)
    assert lines[0].endswith(": 7.9 s")
    assert "powered off by lab-fence: 3.75 s" in lines[1]
    assert "returned 0.32 s after lab-fence" in lines[2]
    # The monitor logs UTC; the fencer local time: the same on a UTC host.
    if datetime.now().astimezone().utcoffset().total_seconds() == 0:
        assert "blocklisted at the OSDs 4.05 s after" in lines[3]
        assert "unfenced (its entry removed) 9.3 s after" in lines[4]


def options(args: list[str]) -> list[str]:
    """Each option named: --long (without =value), and every letter of -abc."""
    named = []
    for arg in args:
        if arg.startswith("--"):
            named.append(arg.split("=")[0])
        elif arg.startswith("-"):
            named += [f"-{letter}" for letter in arg[1:]]
    return named


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)
