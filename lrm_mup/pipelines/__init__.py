"""Pipelines: stages chained end to end (the demo). The CLI calls these; nothing below imports them."""
