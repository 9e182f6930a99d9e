"""The README's parameter reference is the agent's metadata (regenerate with
tools/metadata-to-markdown agents/VirtualDomain --update README.md)."""
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_readme_parameter_reference_matches_the_metadata():
    table = subprocess.run([os.path.join(REPO, "tools", "metadata-to-markdown"),
                            os.path.join(REPO, "agents", "VirtualDomain")],
                           check=True, capture_output=True, text=True).stdout
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    assert "<!-- BEGIN VirtualDomain parameters -->\n" + table + "<!-- END VirtualDomain parameters -->" in readme
