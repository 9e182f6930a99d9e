"""A real NUT (dummy-ups driver, upsd, upsmon from Debian's nut-server/nut-client) in a private
directory: switching the simulated UPS to on-battery and then low-battery makes upsmon call
our NOTIFYCMD and then our SHUTDOWNCMD, which runs `ravada-cluster emergency-shutdown`
(--dry-run, against a simulated cluster's CIB file: the real shutdown on real nodes is
test/e2e/test_lab_ops.py).  The configuration is the sample of doc/operations.md, with
test paths and a private port."""
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support.simcluster import SimCluster
from support.stack import require_stack

REPO = Path(__file__).resolve().parents[2]
NUT = Path("/lib/nut")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, what: str, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def nut(tmp_path):
    require_stack("NUT", str(NUT / "dummy-ups"), str(NUT / "upsd"), str(NUT / "upsmon"), "upsrw", "upsc",
                  "crm_simulate")
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    run.mkdir(mode=0o770)
    port = free_port()
    sim = SimCluster(tmp_path, {"node1": (8, 16384), "node2": (8, 16384)})
    sim.add_vm("desk", memory=1024, priority=0)
    sim.add_vm("web", memory=1024, priority=10)
    sim.start()

    notified, ran = tmp_path / "notified", tmp_path / "shutdown-ran"
    notify = tmp_path / "notify-cmd"
    notify.write_text(f'#!/bin/sh\necho "$NOTIFYTYPE $UPSNAME" >> {notified}\n')
    shutdown = tmp_path / "shutdown-cmd"
    shutdown.write_text("#!/bin/sh\n"
                        f"date +%s > {ran}\n"
                        f"CIB_file={sim.path} /usr/bin/python3 {REPO}/tools/ravada-cluster emergency-shutdown "
                        f"--dry-run --deadline 120 >> {ran} 2>&1\n"
                        f"echo exit=$? >> {ran}\n")
    for script in (notify, shutdown):
        script.chmod(0o755)

    (etc / "nut.conf").write_text("MODE=standalone\n")
    (etc / "ups.conf").write_text('[dummy]\n  driver = dummy-ups\n  port = dummy.dev\n  desc = "test UPS"\n')
    (etc / "dummy.dev").write_text("ups.status: OL\nbattery.charge: 100\nups.mfr: test\nups.model: dummy\n")
    (etc / "upsd.conf").write_text(f"LISTEN 127.0.0.1 {port}\n")
    (etc / "upsd.users").write_text("[admin]\n  password = adminpw\n  actions = SET\n  instcmds = ALL\n"
                                    "[monuser]\n  password = monpw\n  upsmon primary\n")
    (etc / "upsmon.conf").write_text(
        f"MONITOR dummy@127.0.0.1:{port} 1 monuser monpw primary\n"
        "MINSUPPLIES 1\n"
        f'SHUTDOWNCMD "{shutdown}"\n'
        f"NOTIFYCMD {notify}\n"
        "NOTIFYFLAG ONBATT SYSLOG+EXEC\nNOTIFYFLAG LOWBATT SYSLOG+EXEC\nNOTIFYFLAG ONLINE SYSLOG+EXEC\n"
        "NOTIFYFLAG SHUTDOWN SYSLOG+EXEC\nNOTIFYFLAG FSD SYSLOG+EXEC\n"
        "POLLFREQ 1\nPOLLFREQALERT 1\nHOSTSYNC 2\nDEADTIME 15\nFINALDELAY 0\n"
        f"POWERDOWNFLAG {tmp_path}/killpower\n")
    for path in etc.iterdir():
        path.chmod(0o640)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NUT_CONFPATH": str(etc), "NUT_STATEPATH": str(run),
           "NUT_ALTPIDPATH": str(run)}
    started: list[subprocess.Popen] = []

    def start(*argv: str) -> subprocess.Popen:
        proc = subprocess.Popen(list(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / f"{Path(argv[0]).name}.log", "wb"), start_new_session=True)
        started.append(proc)
        return proc

    try:
        start(str(NUT / "dummy-ups"), "-a", "dummy", "-F", "-u", "root")
        wait_for(lambda: any(p.name.startswith("dummy-ups") for p in run.iterdir()), "the driver's socket")
        start(str(NUT / "upsd"), "-F", "-u", "root")
        ups = f"dummy@127.0.0.1:{port}"
        wait_for(lambda: subprocess.run(["upsc", ups, "ups.status"], capture_output=True, text=True,
                                        env=env).stdout.strip() == "OL", "upsd serving the UPS")
        monitor = start(str(NUT / "upsmon"), "-F", "-u", "root")
        yield {"ups": ups, "env": env, "notified": notified, "ran": ran, "monitor": monitor,
               "killpower": tmp_path / "killpower", "sim": sim}
    finally:
        # Stop what this fixture started, by the process groups recorded at start.
        for proc in reversed(started):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def set_status(nut, status: str) -> None:
    done = subprocess.run(["upsrw", "-s", f"ups.status={status}", "-u", "admin", "-p", "adminpw", nut["ups"]],
                          capture_output=True, text=True, env=nut["env"], timeout=30)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: subprocess.run(["upsc", nut["ups"], "ups.status"], capture_output=True, text=True,
                                    env=nut["env"]).stdout.strip().startswith(status), f"ups.status {status}")


def test_on_battery_then_low_battery_runs_the_emergency_shutdown(nut):
    # Let upsmon log in and poll once on mains power.
    time.sleep(3)
    assert not nut["ran"].exists()
    set_status(nut, "OB")
    wait_for(lambda: nut["notified"].exists() and "ONBATT" in nut["notified"].read_text(), "ONBATT notification")
    assert not nut["ran"].exists(), "on battery alone must not shut down"
    set_status(nut, "OB LB")
    wait_for(lambda: nut["ran"].exists() and "exit=" in nut["ran"].read_text(), "SHUTDOWNCMD", timeout=90)
    output = nut["ran"].read_text()
    assert "exit=0" in output, output
    # Our command saw the cluster and planned the stop: lowest priority first.
    assert "class 1 (priority 0): stop desk" in output
    assert "class 2 (priority 10): stop web" in output
    notes = nut["notified"].read_text()
    assert "LOWBATT" in notes
    assert nut["killpower"].read_text().strip() == "upsmon-shutdown-file"
    # A dry run changes nothing in the cluster.
    assert set(nut["sim"].where()) >= {"desk", "web"}
    nut["monitor"].wait(timeout=30)     # upsmon exits after SHUTDOWNCMD, as on a real shutdown
