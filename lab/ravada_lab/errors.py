"""The one exception type the lab raises for conditions a user can act upon."""


class LabError(Exception):
    """A lab operation cannot be done; the message says why, for a human."""
