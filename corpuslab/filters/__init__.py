"""Per-document filter steps of a recipe, one family a module, and the pipeline that runs them.

``base`` holds the step API, the registry and :class:`Pipeline`; ``words`` the word splitters;
``gopher``, ``c4``, ``language`` and ``shard_dedup`` the steps. Importing this package defines,
and so registers, every step.
"""

from corpuslab.filters import c4, gopher, language, shard_dedup  # noqa: F401 - registers steps
from corpuslab.filters.base import STEPS, Pipeline, PipelineResult, Step, StepError, parse_step

__all__ = ["STEPS", "Pipeline", "PipelineResult", "Step", "StepError", "parse_step"]
