"""fence-agents conventions shared by fence_rbd and fence_ravada_lab."""
import io

import pytest
from lxml import etree

from ocf_ravada import fenceagent
from ocf_ravada.fenceagent import FenceAgent, FenceError, Option

AGENT = FenceAgent("fence_sample", "Sample", "A sample device.", (Option("speed", "How fast", "3"),),
                   default_action="reboot", plug_desc="Node to fence", automatic_on=False)


def test_stdin_options_as_the_fencer_sends_them():
    options = fenceagent.options_from_stdin(io.StringIO("# comment\naction=off\nplug=node2\n\nspeed = 5\n"))
    assert options == {"action": "off", "plug": "node2", "speed": "5"}
    with pytest.raises(FenceError, match="line 1"):
        fenceagent.options_from_stdin(io.StringIO("garbage\n"))


def test_arguments_defaults_and_targets():
    options = fenceagent.options_from_args(AGENT, ["-o", "status", "-n", "node3", "--speed", "9"])
    assert options == {"action": "status", "plug": "node3", "speed": "9"}
    assert fenceagent.option(AGENT, {}, "action") == "reboot"
    assert fenceagent.option(AGENT, {"speed": ""}, "speed") == "3"
    assert fenceagent.target_of({"port": "node4"}, "off") == "node4"
    with pytest.raises(FenceError, match="needs the node"):
        fenceagent.target_of({}, "off")


def test_unknown_actions_fail_unknown_keys_are_only_reported():
    err = io.StringIO()
    assert fenceagent.action_of(AGENT, {"action": "on", "colour": "blue", "pcmk_host_list": "x"}, err) == "on"
    assert "ignoring unknown option 'colour'" in err.getvalue() and "pcmk_" not in err.getvalue()
    with pytest.raises(FenceError, match="unsupported action"):
        fenceagent.action_of(AGENT, {"action": "explode"}, err)


def test_metadata_has_the_fence_agent_shape():
    root = etree.fromstring(fenceagent.metadata(AGENT))
    assert root.get("name") == "fence_sample"
    names = [p.get("name") for p in root.iterfind("parameters/parameter")]
    assert names == ["action", "plug", "port", "speed"]
    assert root.find("parameters/parameter[@name='port']").get("deprecated") == "1"
    assert root.find("actions/action[@name='on']").get("automatic") == "0"
    assert {a.get("name") for a in root.iterfind("actions/action")} == set(fenceagent.ACTIONS)


@pytest.mark.parametrize("value", ["inf", "nan", "-3", "0", "many", "1e999"])
def test_timeouts_are_finite_positive_seconds(value):
    timed = FenceAgent("fence_t", "T", "T.", (Option("wait", "Wait", "5"),), default_action="off",
                       plug_desc="Node", automatic_on=False)
    assert fenceagent.seconds(timed, {}, "wait", 60) == 5.0
    with pytest.raises(FenceError, match="wait must be a number of seconds"):
        fenceagent.seconds(timed, {"wait": value}, "wait", 60)
