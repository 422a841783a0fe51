"""What every domain's assets share: metadata from a stage summary and the conservation check."""

from typing import Any

import dagster as dg

CONSERVED = "documents_conserved"


def metadata(summary: dict[str, Any], *skip: str) -> dict[str, Any]:
    """Dagster metadata from a stage summary: numbers as numbers, dicts as JSON, paths as paths."""
    out: dict[str, Any] = {}
    for k, v in summary.items():
        if v is None or k == "data_version" or k in skip:
            continue
        if k == "path":
            out[k] = dg.MetadataValue.path(v)
        elif isinstance(v, dict | list):
            out[k] = dg.MetadataValue.json(v)
        else:
            out[k] = v
    return out


def assets_of(defs: dg.Definitions) -> list[dg.AssetsDefinition]:
    """The asset definitions in ``defs``: what ``dg.materialize`` runs and stats reads keys of.

    ``Definitions.assets`` may hold specs and source assets too; corpuslab builds every asset
    with ``@dg.asset`` / ``@dg.multi_asset``, so anything else is a bug and is named here.
    """
    out: list[dg.AssetsDefinition] = []
    for a in defs.assets or []:
        if not isinstance(a, dg.AssetsDefinition):
            raise TypeError(f"expected asset definitions only, found a {type(a).__name__}: {a!r}")
        out.append(a)
    return out


def conservation(key: dg.AssetKey, summary: dict[str, Any], *counted: str) -> dg.AssetCheckResult:
    """``documents_conserved``: documents in = kept + dropped, read back from written files."""
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=CONSERVED,
        passed=bool(summary["conserved"]),
        metadata={k: summary[k] for k in counted},
        description="documents in = kept + dropped (read back from the written files)",
    )


def result(
    key: dg.AssetKey, summary: dict[str, Any], checks: list[dg.AssetCheckResult] | None = None
) -> dg.MaterializeResult:
    """The materialization of ``key``: the summary as metadata, its content-hash data version."""
    return dg.MaterializeResult(
        asset_key=key,
        metadata=metadata(summary),
        data_version=dg.DataVersion(summary["data_version"]),
        check_results=checks or [],
    )
