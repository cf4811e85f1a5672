"""Argument types the commands share: a bad value is argparse's usage error naming the flag (exit 2), never a
traceback from deep inside a command."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import date


def _number(kind: type, what: str, minimum: float, maximum: float | None = None, strictly_above: bool = False) -> Callable[[str], float]:
    """A parser of `what` (a `kind`) at least `minimum` (above it, when `strictly_above`) and at most `maximum`."""
    bounds = f"above {minimum:g}" if strictly_above else f"at least {minimum:g}"
    if maximum is not None:
        bounds = f"{minimum:g}-{maximum:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        within = value > minimum if strictly_above else value >= minimum  # NaN is neither
        if not within or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{text} is not {what} ({bounds})")
        return value

    return parse


port_number = _number(int, "a port number", 1, 65535)  # a TCP port a server can listen on
positive_int = _number(int, "a whole number", 1)
non_negative_float = _number(float, "a number", 0)
interval_seconds = _number(float, "a number of seconds", 0, 86_400)  # what a thread can wait for (inf cannot)
event_count = _number(int, "a number of events", 0, 1_000_000_000)
non_negative_int = _number(int, "a whole number", 0)
traffic_share = _number(float, "a share of requests", 0, 1)
positive_float = _number(float, "a number", 0, strictly_above=True)


def iso_day(text: str) -> str:
    """A calendar day as YYYY-MM-DD (kept as text: the commands read it with date.fromisoformat)."""
    try:
        date.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day as YYYY-MM-DD ({err})") from None
    return text


def one_or_more_of(*choices: str) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated list of `choices` (a typo was run as another side under its name, or left out silently)."""

    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [c for c in chosen if c not in choices]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"{', '.join(unknown) or repr(text)}: choose from {', '.join(choices)} (comma-separated)")
        return chosen

    return parse
