"""`mlops` commands about models: status, approve, rollback, history, reproduce."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    return None
