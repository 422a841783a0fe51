"""Stage functions: read a stage's inputs, call the library, write its outputs, return a summary.

One ``materialize_*`` per asset kind. Each takes an :class:`~corpuslab.declarations.Experiment`,
a :class:`~corpuslab.layout.Layout` and names, and returns a plain dict (metadata, checks and
the ``data_version``), so the Dagster assets stay a few lines and tests call these directly.
Nothing here imports dagster.
"""
