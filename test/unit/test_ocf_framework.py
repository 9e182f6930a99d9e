"""The OCF framework: parameters, metadata, logging, deadline, dispatcher."""
import io
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest
from lxml import etree

from ocf_ravada import log as ocf_log
from ocf_ravada.agent import Agent, run
from ocf_ravada.deadline import Deadline
from ocf_ravada.metadata import Action, AgentInfo, to_xml
from ocf_ravada.ocf import Environment, OcfError, Rc
from ocf_ravada.params import Deprecation, Parameter, parse_all, parse_lenient

PCS_RNG = "/usr/share/pcs/data/ocf-1.1.rng"


def test_typed_parameters_parse_and_reject():
    count = Parameter("count", "n", "n", type="integer", default=3, minimum=0)
    flag = Parameter("flag", "f", "f", type="boolean", default=False)
    mode = Parameter("mode", "m", "m", type="select", options=("a", "b"), default="a")
    assert count.parse(None) == 3 and count.parse("") == 3 and count.parse("12") == 12
    assert flag.parse("yes") is True and flag.parse("OFF") is False
    assert mode.parse("b") == "b"
    for param, raw, why in ((count, "x1", "whole number"), (count, "-1", "at least 0"),
                            (flag, "maybe", "boolean"), (mode, "c", "one of a, b")):
        with pytest.raises(OcfError) as err:
            param.parse(raw)
        assert err.value.rc == Rc.ERR_CONFIGURED and why in err.value.reason and raw in err.value.reason


def test_required_parameter_and_lenient_parsing():
    params = (Parameter("config", "c", "c", required=True), Parameter("n", "n", "n", type="integer", default=1))
    with pytest.raises(OcfError) as err:
        parse_all(params, Environment({}))
    assert err.value.rc == Rc.ERR_CONFIGURED and "'config' is not set" in err.value.reason
    values, problems = parse_lenient(params, Environment({"OCF_RESKEY_n": "zz"}))
    assert values["n"] == 1 and len(problems) == 2


def info_with_everything():
    return AgentInfo(
        name="Sample", version="1.0", shortdesc="short <&> desc", longdesc='long "quoted" & <b>',
        parameters=(
            Parameter("path", "p", "the path", required=True, unique_group="path"),
            Parameter("speed", "s", "s", type="integer", default=5, reloadable=True),
            Parameter("mode", "m", "m", type="select", options=("x", "y"), default="x"),
            Parameter("old", "o", "o", deprecated=Deprecation("use path", ("path",))),
        ),
        actions=(Action("start", 20), Action("stop", 20), Action("monitor", 10, interval=10, depth=0),
                 Action("reload-agent", 5), Action("meta-data", 5)),
    )


def test_metadata_is_ocf_1_1_and_validates_against_pcs_schema():
    xml = to_xml(info_with_everything())
    root = etree.fromstring(xml)
    assert root.findtext("version") == "1.1"
    assert root.findtext("shortdesc") == "short <&> desc"  # escaped, round-trips
    speed = root.find("parameters/parameter[@name='speed']")
    assert speed.get("reloadable") == "1" and speed.find("content").get("default") == "5"
    assert [o.get("value") for o in root.iterfind("parameters/parameter[@name='mode']/content/option")] == ["x", "y"]
    assert root.find("parameters/parameter[@name='old']/deprecated/replaced-with").get("name") == "path"
    assert root.find("parameters/parameter[@name='path']").get("unique-group") == "path"
    if os.path.exists(PCS_RNG):
        schema = etree.RelaxNG(etree.parse(PCS_RNG))
        assert schema.validate(root), schema.error_log


def test_deadline_keeps_a_margin_and_shrinks():
    now = [100.0]
    deadline = Deadline.from_timeout_ms(20000, 90, clock=lambda: now[0])
    assert deadline.remaining() == pytest.approx(19.0)
    earlier = deadline.earlier_by(5)
    assert earlier.remaining() == pytest.approx(14.0)
    now[0] += 30
    assert deadline.expired() and earlier.remaining() == 0
    assert Deadline.from_timeout_ms(None, 90, clock=lambda: 0).remaining() == pytest.approx(88)


def test_probe_and_check_level_detection():
    env = Environment({"OCF_RESKEY_CRM_meta_interval": "0", "OCF_CHECK_LEVEL": "15"})
    assert env.is_probe("monitor") and not env.is_probe("start")
    assert env.check_level() == 10
    assert not Environment({"OCF_RESKEY_CRM_meta_interval": "10000"}).is_probe("monitor")
    assert Environment({}).is_probe("monitor")


def test_logging_follows_ocf_shellfuncs(tmp_path):
    logfile, debuglog = tmp_path / "ha.log", tmp_path / "debug.log"
    stderr = io.StringIO()
    quiet = ocf_log.Log("A", "r", {"HA_LOGFILE": str(logfile), "HA_DEBUGLOG": str(debuglog), "HA_debug": "0"}, stderr)
    quiet.info("kept")
    quiet.debug("dropped")
    assert "INFO: kept" in logfile.read_text() and "A(r)[" in logfile.read_text()
    assert "dropped" not in debuglog.read_text() and stderr.getvalue() == ""
    loud = ocf_log.Log("A", "r", {"HA_logfile": str(logfile), "HA_debugfile": str(debuglog), "HA_debug": "1"}, stderr)
    loud.debug("seen")
    assert "DEBUG: seen" in debuglog.read_text() and "seen" not in logfile.read_text()
    bare = ocf_log.Log("A", "r", {}, stderr)
    bare.info("to stderr")
    assert "INFO: to stderr" in stderr.getvalue()


class Sample(Agent):
    info = info_with_everything()

    def handlers(self):
        return {"start": self.start, "stop": lambda: Rc.SUCCESS, "monitor": lambda: Rc.NOT_RUNNING}

    def start(self):
        if self.params["speed"] > 100:
            raise OcfError(Rc.ERR_CONFIGURED, "speed too high")
        raise RuntimeError("boom")


def test_dispatcher_codes_and_exit_reasons(capsys):
    base = {"OCF_RESKEY_path": "/x"}
    assert run(Sample, ["Sample", "meta-data"], {}) == 0
    assert capsys.readouterr().out.startswith("<resource-agent")
    assert run(Sample, ["Sample", "frobnicate"], base) == Rc.ERR_UNIMPLEMENTED
    assert "ocf-exit-reason:action 'frobnicate' is not implemented" in capsys.readouterr().err
    assert run(Sample, ["Sample", "start"], {**base, "OCF_RESKEY_speed": "500"}) == Rc.ERR_CONFIGURED
    assert "ocf-exit-reason:speed too high" in capsys.readouterr().err
    assert run(Sample, ["Sample", "start"], {**base, "OCF_RESKEY_speed": "fast"}) == Rc.ERR_CONFIGURED
    assert "invalid value 'fast' for parameter 'speed'" in capsys.readouterr().err
    assert run(Sample, ["Sample", "start"], base) == Rc.ERR_GENERIC
    assert "internal error" in capsys.readouterr().err
    # stop and monitor do not refuse over a bad parameter
    assert run(Sample, ["Sample", "stop"], {**base, "OCF_RESKEY_speed": "fast"}) == 0
    assert run(Sample, ["Sample", "monitor"], {"OCF_RESKEY_speed": "fast"}) == Rc.NOT_RUNNING
    assert run(Sample, ["Sample"], {}) == Rc.ERR_ARGS


def test_meta_data_works_as_nobody_and_prints_only_xml():
    # A world-readable copy: the checkout (and pytest's tmp dir) may not be enterable by nobody.
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="ravada-nobody-"))
    try:
        shutil.copytree(os.path.join(repo, "agents"), tmp / "agents")
        shutil.copytree(os.path.join(repo, "lib"), tmp / "lib", ignore=shutil.ignore_patterns("__pycache__"))
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(0o755)
        done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                               "/usr/bin/python3", str(tmp / "agents" / "VirtualDomain"), "meta-data"],
                              capture_output=True, env={"PATH": "/usr/bin:/bin"}, cwd="/")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    etree.fromstring(done.stdout)
