"""Shared test setup: the tree's lib/, lab/, placement/ and test/support on sys.path (never
an installed copy)."""
import os
import sys

TEST_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TEST_DIR)
for path in (os.path.join(REPO, "lib"), os.path.join(REPO, "lab"), os.path.join(REPO, "placement"), TEST_DIR):
    if path not in sys.path:
        sys.path.insert(0, path)
