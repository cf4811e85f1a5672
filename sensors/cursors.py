"""Reading a sensor's cursor: a JSON object, or a fresh one where it is unreadable.

A cursor set by hand (`dagster sensor cursor --set`) or written by another version
of a sensor failed every tick of that sensor with a traceback, and a failed landing
sensor stopped all ingestion of its pipeline. Starting over is said in the log; it
asks again only for what Dagster has not launched under the same run key.
"""

import json

import dagster as dg


def read_cursor(context: dg.SensorEvaluationContext) -> dict:
    """The sensor's cursor as a dict ({} when there is none, or when it is not a JSON object: said in the log)."""
    if not context.cursor:
        return {}
    try:
        value = json.loads(context.cursor)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    context.log.warning(f"unreadable sensor cursor {context.cursor[:200]!r}: starting over")
    return {}
