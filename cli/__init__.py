"""Command-line entry points over the Dagster definitions (the demo, stale materialization)."""
