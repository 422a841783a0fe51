"""MLflow bookkeeping shared by the stages and the command line."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "token", "secret", "key", "auth"})


def redact_uri(uri: str) -> str:
    """``uri`` with any password or token replaced by ``***`` (for logs and records).

    A tracking URI may carry credentials (``https://user:pass@host``,
    ``postgresql://user:pass@db/mlflow``, ``...?token=...``); only the redacted form is ever
    written where people or MLflow can read it. Everything else is left as written.
    """
    parts = urlsplit(uri)
    out = uri
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        hidden = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
        out = out.replace(parts.netloc, hidden, 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(k.lower() in SECRET_QUERY_KEYS for k, _ in pairs):
            hidden_query = urlencode(
                [(k, "***" if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*"
            )
            out = out.replace(f"?{parts.query}", f"?{hidden_query}", 1)
    return out


def set_terminated(client: Any, run_id: str, status: str) -> None:
    """End an MLflow run without MLflow printing its URL, credentials and all, to stdout.

    ``MlflowClient.set_terminated`` writes "View run ... at: <tracking host>" for a tracking
    server, user info included; MLflow's own switch turns that off for the call.
    """
    key = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    before = os.environ.get(key)
    os.environ[key] = "true"
    try:
        client.set_terminated(run_id, status)
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def experiment_id(client: Any, name: str, artifact_root: str | None = None) -> str:
    """The id of MLflow experiment ``name``, created (with ``artifact_root``) on first use."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root)
    except MlflowException:  # created concurrently
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
