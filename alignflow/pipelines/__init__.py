"""Pipelines shipped with alignflow (the demo's)."""
