"""`mlops` commands about serving."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    return None
