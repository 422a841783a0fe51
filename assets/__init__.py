"""The Dagster assets, one module a domain: corpus, pool, mixture, training, evaluation, stats.

Each asset is a few lines over a ``corpuslab.stages`` function: its key, deps, partitions,
checks and code version, then the call and the metadata it reports.
"""
