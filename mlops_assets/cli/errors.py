"""The error a command raises for what it cannot do as asked: `mlops` prints it without a traceback."""


class CommandError(Exception):
    """A command that cannot do what was asked; printed without a traceback."""
