"""The Dagster code location: assets from ``experiments/`` plus jobs, sensors and resources.

``dagster dev`` from the repo root loads this module (``[tool.dagster]`` in pyproject.toml).
"""

from jobs import build_definitions

defs = build_definitions()
