"""The ravada_alert agent, run as Pacemaker runs it (no arguments, CRM_alert_* environment,
instance attributes as variables) with real hook processes: one line per event, hooks run,
a hanging hook and everything it started killed after its timeout, failures logged."""
import os
import stat
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(REPO, "alerts", "ravada_alert")

COMMON = {"CRM_alert_version": "2.1.5", "CRM_alert_node_sequence": "7", "CRM_alert_timestamp": "23:01:02.123456",
          "CRM_alert_timestamp_epoch": "1796000000", "CRM_alert_timestamp_usec": "123456"}
# The variables Pacemaker 2.1.5 sets for each kind (lib/common/alerts.c; each also as CRM_notify_*).
EVENTS = {
    "node": {"CRM_alert_kind": "node", "CRM_alert_node": "node2", "CRM_alert_nodeid": "2",
             "CRM_alert_desc": "lost"},
    "fencing": {"CRM_alert_kind": "fencing", "CRM_alert_node": "node2", "CRM_alert_task": "reboot",
                "CRM_alert_rc": "0",
                "CRM_alert_desc": "Operation reboot of node2 by node1 for pacemaker-controld.1234@node1: OK"},
    "resource": {"CRM_alert_kind": "resource", "CRM_alert_node": "node1", "CRM_alert_rsc": "vm1",
                 "CRM_alert_task": "monitor", "CRM_alert_interval": "10000", "CRM_alert_rc": "7",
                 "CRM_alert_target_rc": "0", "CRM_alert_status": "0", "CRM_alert_desc": "not running",
                 "CRM_alert_exec_time": "42"},
    "attribute": {"CRM_alert_kind": "attribute", "CRM_alert_node": "node3",
                  "CRM_alert_attribute_name": "ravada-base-deb12", "CRM_alert_attribute_value": "1"},
}
EXPECTED = {
    "node": "node node2 (id 2) is now lost",
    "fencing": "fencing (reboot) of node2 succeeded: Operation reboot of node2 by node1",
    "resource": "resource vm1 monitor (every 10000 ms) on node1: not running (rc 7, expected 0, status 0, 42 ms)",
    "attribute": "attribute ravada-base-deb12 on node3 = 1",
}


def pacemaker_env(event: dict, tmp_path, **extra) -> dict:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **COMMON, **event,
           "CRM_alert_recipient": str(tmp_path / "alerts.log"),
           "ravada_hooks_dir": str(tmp_path / "hooks"), **extra}
    env.update({k.replace("CRM_alert_", "CRM_notify_"): v for k, v in list(env.items())
                if k.startswith("CRM_alert_")})
    return env


def run_agent(env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([AGENT], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def hook(tmp_path, name: str, body: str, mode: int = 0o755) -> str:
    directory = tmp_path / "hooks"
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return str(path)


def logged(tmp_path) -> list[str]:
    path = tmp_path / "alerts.log"
    return path.read_text().splitlines() if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (its parent has not reaped it yet).
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("kind", sorted(EVENTS))
def test_each_event_kind_is_one_line(tmp_path, kind):
    done = run_agent(pacemaker_env(EVENTS[kind], tmp_path))
    assert done.returncode == 0, done.stderr
    lines = logged(tmp_path)
    assert len(lines) == 1
    assert EXPECTED[kind] in lines[0]


def test_no_recipient_and_no_hook_directory_is_fine(tmp_path):
    env = pacemaker_env(EVENTS["node"], tmp_path)
    del env["CRM_alert_recipient"], env["CRM_notify_recipient"]
    assert run_agent(env).returncode == 0
    assert logged(tmp_path) == []


def test_hooks_get_the_kind_and_pacemakers_environment(tmp_path):
    record = tmp_path / "record"
    hook(tmp_path, "10-record", f'echo "$1|$CRM_alert_node|$CRM_alert_task|$RAVADA_ALERT_SUMMARY" >> {record}\n')
    hook(tmp_path, "20-second", f'echo second >> {record}\n')
    done = run_agent(pacemaker_env(EVENTS["fencing"], tmp_path))
    assert done.returncode == 0, done.stderr
    lines = record.read_text().splitlines()
    assert sorted(lines)[0].startswith("fencing|node2|reboot|fencing (reboot) of node2 succeeded")
    assert "second" in lines


def test_hanging_hook_and_its_children_are_killed_after_the_timeout(tmp_path):
    pids = tmp_path / "pids"
    # The hook starts a child that ignores SIGTERM, records both PIDs, then hangs.
    hook(tmp_path, "hang", f"(trap '' TERM; sleep 1000) & echo $$ $! > {pids}\nsleep 1000\n")
    record = tmp_path / "quick"
    hook(tmp_path, "quick", f"echo ran > {record}\n")
    began = time.monotonic()
    done = run_agent(pacemaker_env(EVENTS["node"], tmp_path, ravada_hook_timeout="1"))
    took = time.monotonic() - began
    assert done.returncode == 1
    assert took < 10, f"the agent waited {took:.1f}s for a hook limited to 1s"
    hook_pid, child_pid = (int(p) for p in pids.read_text().split())
    deadline = time.monotonic() + 5
    while (alive(hook_pid) or alive(child_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(hook_pid) and not alive(child_pid)
    assert record.read_text() == "ran\n"
    assert any("hook" in line and "hang timed out" in line and f"process group {hook_pid}" in line
               for line in logged(tmp_path)), logged(tmp_path)


def test_failing_hook_is_logged_and_others_still_run(tmp_path):
    hook(tmp_path, "fail", "echo boom >&2\nexit 3\n")
    record = tmp_path / "ok"
    hook(tmp_path, "ok", f"touch {record}\n")
    done = run_agent(pacemaker_env(EVENTS["resource"], tmp_path))
    assert done.returncode == 1
    assert record.exists()
    assert any("hook" in line and "fail exit 3: boom" in line for line in logged(tmp_path))


def test_hook_leaving_a_child_on_its_output_does_not_block(tmp_path):
    hook(tmp_path, "detach", "sleep 1000 &\nexit 0\n")
    began = time.monotonic()
    done = run_agent(pacemaker_env(EVENTS["node"], tmp_path, ravada_hook_timeout="20"))
    assert done.returncode == 0
    assert time.monotonic() - began < 10


def test_only_proper_hooks_run(tmp_path):
    record = tmp_path / "record"
    for name, mode in (("good", 0o755), ("backup~", 0o755), ("x.dpkg-old", 0o755), ("noexec", 0o644),
                       ("writable", 0o775)):
        hook(tmp_path, name, f"echo {name} >> {record}\n", mode)
    os.chmod(tmp_path / "hooks" / "writable", 0o775)
    done = run_agent(pacemaker_env(EVENTS["node"], tmp_path))
    assert done.returncode == 0
    assert record.read_text().split() == ["good"]
    assert any("writable by group or others" in line for line in logged(tmp_path))


def test_recipient_fifo_never_blocks(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    env = pacemaker_env(EVENTS["node"], tmp_path, CRM_alert_recipient=str(fifo))
    done = run_agent(env, timeout=20)
    assert done.returncode == 0
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_bad_hook_timeout_falls_back_and_says_so(tmp_path):
    hook(tmp_path, "ok", "exit 0\n")
    done = run_agent(pacemaker_env(EVENTS["node"], tmp_path, ravada_hook_timeout="inf"))
    assert done.returncode == 0
    assert any("ravada_hook_timeout='inf'" in line for line in logged(tmp_path))


def test_control_characters_in_values_stay_on_one_line(tmp_path):
    event = dict(EVENTS["node"], CRM_alert_node="evil\nnode")
    run_agent(pacemaker_env(event, tmp_path))
    assert len(logged(tmp_path)) == 1
