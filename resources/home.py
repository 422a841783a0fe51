"""``home``: where every stage's outputs live — a local folder or ``s3://bucket/prefix``.

One setting, ``CORPUSLAB_HOME`` (or this resource's ``home``). Assets wrap their stage call in
``with home.staged(exp, key[, shard]) as layout:``: for a local home that is the home's layout
and nothing else; for an ``s3://`` home the step's inputs (listed in
:mod:`corpuslab.stages.io`, not in the assets) are pulled into a local working copy first and
its outputs pushed after it succeeds (:mod:`corpuslab.home`).
"""

from contextlib import AbstractContextManager
from pathlib import Path

import dagster as dg
from pydantic import Field

from corpuslab.declarations import Experiment
from corpuslab.home import Home
from corpuslab.layout import Layout
from corpuslab.stages.io import StageIO, stage_io


class CorpuslabHome(dg.ConfigurableResource):
    """The home under which every stage writes: a local folder or an ``s3://`` prefix."""

    home: str = Field(description="A local folder or s3://bucket/prefix.")
    cache: str | None = Field(
        default=None,
        description="s3:// home: the local cache folder of its working copy "
        "(default $CORPUSLAB_CACHE, else ~/.cache/corpuslab).",
    )
    per_step: bool = Field(
        default=False,
        description="s3:// home: each step works in a fresh working copy, deleted after it (a "
        "stateless worker); default: one working copy shared by this machine's steps.",
    )

    def open(self) -> Home:
        """The library's home for these settings.

        An s3:// home is reached with the standard AWS settings of the environment
        (``AWS_ENDPOINT_URL``, ``AWS_REGION``, the credential chain): the same ones the training
        processes and MLflow's S3 artifact store use, which take no Dagster configuration.
        """
        return Home.open(self.home, Path(self.cache) if self.cache else None, None, self.per_step)

    def layout(self) -> Layout:
        """The home's paths (for an s3:// home: of its shared working copy)."""
        return Layout.for_location(self.home, Path(self.cache) if self.cache else None)

    def staged(
        self, exp: Experiment | None, key: dg.AssetKey, partition: str | None = None
    ) -> AbstractContextManager[Layout]:
        """The layout to run asset ``key`` (for shard ``partition``) on, synchronized around it."""
        home = self.open()
        io = stage_io(exp, home.layout, key.path, partition) if home.remote else StageIO()
        name = key.to_user_string() + (f"[{partition}]" if partition else "")
        return home.staged(io, name)
