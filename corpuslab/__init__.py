"""corpuslab: the orchestration-agnostic library behind the Dagster testbed.

Nothing in this package imports dagster, so a training container on a cluster needs only it.
"""

__version__ = "0.1.0"
