"""Every agent's metadata reads the way its consumers read it.

crmsh 4.x joins the agent's output lines into a str and parses that with lxml; lxml refuses a
str that declares an encoding, which made `crm ra info ocf:ravada:VirtualDomain` fail with
"Cannot parse meta-data XML". pcs validates OCF agents against its OCF 1.1 schema.
"""
import subprocess
from pathlib import Path

import pytest
from lxml import etree

TOP = Path(__file__).resolve().parents[2]
OCF_AGENTS = sorted(p for p in (TOP / "agents").iterdir() if p.is_file())
FENCE_AGENTS = sorted([*(TOP / "tools").glob("fence_*"), *(TOP / "lab").glob("fence_*")])
PCS_RNG = Path("/usr/share/pcs/data/ocf-1.1.rng")


def metadata_text(agent: Path) -> str:
    argv = [str(agent), "-o", "metadata"] if agent.name.startswith("fence_") else [str(agent),
                                                                                    "meta-data"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_agents_were_found():
    assert {a.name for a in OCF_AGENTS} >= {"VirtualDomain", "nodeinfo"}
    assert {a.name for a in FENCE_AGENTS} >= {"fence_rbd", "fence_ravada_lab"}


@pytest.mark.parametrize("agent", OCF_AGENTS + FENCE_AGENTS, ids=lambda p: p.name)
def test_metadata_parses_as_text_like_crmsh_does(agent):
    text = metadata_text(agent)
    root = etree.fromstring("\n".join(text.splitlines()))  # crmsh's own way (ra.py, meta())
    assert root.tag == "resource-agent" and root.get("name") == agent.name
    assert root.find("parameters/parameter") is not None
    assert text.isascii(), "non-ASCII must be character references (any decoding reads them)"


@pytest.mark.skipif(not PCS_RNG.exists(), reason="pcs's OCF 1.1 schema is not installed")
@pytest.mark.parametrize("agent", OCF_AGENTS, ids=lambda p: p.name)
def test_ocf_metadata_validates_against_pcs_schema(agent):
    schema = etree.RelaxNG(etree.parse(str(PCS_RNG)))
    document = etree.fromstring(metadata_text(agent).encode())
    assert schema.validate(document), schema.error_log
