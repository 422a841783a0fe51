"""``home``: the folder under which every stage writes (``CORPUSLAB_HOME``)."""

from pathlib import Path

import dagster as dg

from corpuslab.layout import Layout


class CorpuslabHome(dg.ConfigurableResource):
    """The home folder under which every stage writes (a local path; S3 comes with storage)."""

    home: str

    def layout(self) -> Layout:
        return Layout(Path(self.home))
