"""Host shutdown ordering drop-in (systemd hosts)."""
import io

from ocf_ravada.deadline import Deadline
from ocf_ravada.log import Log
from ocf_ravada.vdomain import hostorder


def test_drop_in_written_once_per_boot_and_systemd_told(tmp_path):
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    calls = []
    log = Log("VirtualDomain", "t", {}, io.StringIO())
    assert hostorder.ensure(Deadline(10), log, str(tmp_path), lambda argv, _t: calls.append(argv))
    text = (tmp_path / hostorder.DROP_IN).read_text()
    assert "After=libvirtd.service virtqemud.service" in text and "Wants=virt-guest-shutdown.target" in text
    assert calls == [["systemctl", "daemon-reload"], ["systemctl", "start", "virt-guest-shutdown.target"]]
    assert not hostorder.ensure(Deadline(10), log, str(tmp_path), lambda argv, _t: calls.append(argv))
    assert len(calls) == 2


def test_nothing_on_hosts_without_systemd(tmp_path):
    log = Log("VirtualDomain", "t", {}, io.StringIO())
    assert not hostorder.ensure(Deadline(10), log, str(tmp_path), lambda argv, _t: None)
    assert not (tmp_path / "run").exists()


def test_a_failing_systemctl_only_warns(tmp_path):
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    err = io.StringIO()

    def broken(argv, _timeout):
        raise OSError("systemctl: not found")

    assert hostorder.ensure(Deadline(10), Log("VirtualDomain", "t", {}, err), str(tmp_path), broken)
    assert "WARNING: systemctl daemon-reload failed" in err.getvalue()
