"""One exception type for everything a user can cause (bad file, bad option, missing model).

The CLI prints it as a single line and exits non-zero; tracebacks are kept for our bugs.
"""


class EdgecutError(Exception):
    pass


class UsageError(EdgecutError):
    """A bad option value or combination the argparse types cannot see: exit 2, as theirs."""
