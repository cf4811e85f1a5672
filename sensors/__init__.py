"""Sensors: what starts runs without a person."""
