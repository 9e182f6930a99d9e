"""The end-to-end fixtures live in lab_support; pytest finds them here."""
from lab_support import installed, lab, settled_lab  # noqa: F401
