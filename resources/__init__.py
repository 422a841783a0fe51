"""Dagster resources, one module each, chosen per environment in :mod:`resources.environments`."""
