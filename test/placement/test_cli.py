"""ravada-place as a command: input checking, exit codes, output formats (JSON input)."""
from __future__ import annotations

import json

import pytest

from placement_helpers import run_tool, write_json

NODES = [{"name": "n1", "cpu": 8, "hv_memory": 16384, "bases": ["w10"]},
         {"name": "n2", "cpu": 16, "hv_memory": 32768, "bases": ["w10", "deb"]}]
VMS = [{"name": "a1", "cpu": 2, "hv_memory": 4096, "user": "ann", "base": "w10"},
       {"name": "b1", "cpu": 4, "hv_memory": 8192, "base": "deb"},
       {"name": "r1", "cpu": 1, "hv_memory": 2048, "node": "n1"}]


def test_place_prints_a_plan_and_pcs_and_crm_commands(tmp_path):
    path = write_json(tmp_path, NODES, VMS)
    assert run_tool("place", "--json", path, check=True).stdout.splitlines() == ["b1: n2", "a1: n1"]
    pcs = run_tool("place", "--json", path, "--format", "pcs", check=True).stdout.splitlines()
    assert pcs == ["pcs constraint location add -- ravada-place-b1 b1 n2 1000",
                   "pcs constraint location add -- ravada-place-a1 a1 n1 1000"]
    crm = run_tool("place", "--json", path, "--format", "crm", "--score", "INFINITY", check=True).stdout
    assert "crm configure location ravada-place-b1 b1 INFINITY: n2" in crm


def test_json_output_lists_moves_and_constraints(tmp_path):
    out = run_tool("drain", "n1", "--json", write_json(tmp_path, NODES, VMS), "--format", "json", check=True)
    plan = json.loads(out.stdout)
    assert plan["complete"] and plan["moves"] == [{"vm": "r1", "from": "n1", "to": "n2"}]
    assert {c["id"]: c["score"] for c in plan["constraints"]} == {
        "ravada-place-r1": "1000", "ravada-place-r1-avoid-n1": "-INFINITY"}


def test_explain_shows_scores_and_exclusions(tmp_path):
    out = run_tool("place", "b1", "--json", write_json(tmp_path, NODES, VMS), "--explain", check=True).stdout
    assert "n1                   excluded: base 'deb' not present" in out
    assert "* n2" in out


def test_unplaceable_vm_exits_3_and_says_why(tmp_path):
    vms = VMS + [{"name": "huge", "cpu": 1, "hv_memory": 999999}]
    proc = run_tool("place", "--json", write_json(tmp_path, NODES, vms), "--format", "pcs")
    assert proc.returncode == 3
    assert "huge: CANNOT PLACE: larger than any node" not in proc.stdout  # pcs format prints only commands
    assert "nothing applied" in proc.stderr
    text = run_tool("place", "--json", write_json(tmp_path, NODES, vms))
    assert text.returncode == 3 and "huge: CANNOT PLACE: larger than any node" in text.stdout


@pytest.mark.parametrize("nodes, vms, message", [
    ([{"name": "n1", "cpu": -1, "hv_memory": 1}], [], "negative"),
    (NODES, [{"name": "v", "cpu": 1, "hv_memory": -5}], "negative"),
    (NODES, [{"name": "v", "cpu": "two", "hv_memory": 5}], "expected an integer"),
    (NODES, [{"name": "v", "cpu": 1, "hv_memory": 5, "node": "ghost"}], "unknown node"),
    (NODES, [{"name": "v", "cpu": 1}], "missing hv_memory"),
    (NODES, [{"name": "v", "cpu": 1, "hv_memory": 1, "colour": "red"}], "unknown field"),
    (NODES + NODES[:1], [], "duplicate node"),
])
def test_bad_json_is_refused_with_a_clear_message(tmp_path, nodes, vms, message):
    proc = run_tool("place", "--json", write_json(tmp_path, nodes, vms))
    assert proc.returncode == 1 and message in proc.stderr and proc.stdout == ""


def test_malformed_json_and_missing_files_are_input_errors(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{nodes: ")
    assert run_tool("place", "--json", str(broken)).returncode == 1
    proc = run_tool("place", "--json", str(tmp_path / "absent.json"))
    assert proc.returncode == 1 and "cannot read" in proc.stderr


def test_unknown_vm_or_node_and_bad_options(tmp_path):
    path = write_json(tmp_path, NODES, VMS)
    assert "unknown VM" in run_tool("place", "ghost", "--json", path).stderr
    assert "already running" in run_tool("place", "r1", "--json", path).stderr
    assert "unknown node" in run_tool("drain", "ghost", "--json", path).stderr
    assert run_tool("place", "--json", path, "--score", "-5").returncode == 1
    assert run_tool("place", "--json", path, "--cpu-ratio", "0").returncode == 2
    assert run_tool("place", "--json", path, "--apply").returncode == 1
    assert run_tool("clear", "--json", path).returncode == 1
    for odd in ("nan", "inf", "-1"):
        proc = run_tool("rebalance", "--json", path, "--cpu-weight", odd)
        assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    usage = run_tool("place", "--json", path, "--cpu-ratio", "nan")
    assert usage.returncode == 2 and len(usage.stderr.splitlines()) == 1 and "Traceback" not in usage.stderr
