"""How a command stops short: an error `mlops` prints without a traceback, or a SIGTERM it unwinds from."""


class CommandError(Exception):
    """A command that cannot do what was asked; printed without a traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM reached a command that runs its own Ray: it unwinds like Ctrl-C, through every cleanup (exit 143)."""
