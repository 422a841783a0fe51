"""The path policy of declarations, the errors they raise, and where declarations live."""

from __future__ import annotations

import os
import re
from pathlib import Path

from corpuslab.layout import Layout

EXPERIMENTS_ENV = "CORPUSLAB_EXPERIMENTS"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEEPSPEED_DIR = REPO_ROOT / "infra" / "deepspeed"
SECTIONS = ("sources", "recipes", "mixtures", "runs", "evals", "studies")
MAX_YAML_NODES = 100_000  # nodes of a file with every alias expanded: declarations hold hundreds
MAX_YAML_DEPTH = 64  # nesting levels; declarations use fewer than ten
_VAR = re.compile(r"\$(\w+)|\$\{([^}]*)\}")


class DeclarationError(ValueError):
    """A declaration that cannot be used; the message names the file and the key."""


def expand_vars(value: str) -> str:
    """``~`` and ``$VAR`` / ``${VAR}`` expanded; an undefined variable is a ``ValueError``."""
    missing = sorted({a or b for a, b in _VAR.findall(value) if (a or b) not in os.environ})
    if missing:
        raise ValueError(f"undefined environment variable(s) {', '.join(missing)} in {value!r}")
    return os.path.expanduser(os.path.expandvars(value))


def resolve_path(value: str, base: Path) -> Path:
    """A declared local path under the path policy: absolute as is, relative under ``base``.

    A relative path may use ``..`` only while it stays inside ``base``: to point elsewhere,
    write an absolute path or start it with a ``$VAR``.
    """
    if "\x00" in value:
        raise ValueError("a path cannot hold a NUL character")
    expanded = Path(expand_vars(value))
    if expanded.is_absolute():
        return Path(os.path.normpath(expanded))
    base = Path(os.path.normpath(base.absolute()))
    full = Path(os.path.normpath(base / expanded))
    if not full.is_relative_to(base):
        raise ValueError(
            f"relative path {value!r} leaves the base folder {base} (relative paths are under "
            "$CORPUSLAB_HOME); use an absolute path or a $VAR to point elsewhere"
        )
    return full


def default_home() -> Path:
    """The base folder of relative paths: ``$CORPUSLAB_HOME`` (see :mod:`corpuslab.layout`)."""
    return Layout.from_env().home


def _deepspeed_path(name: str, home: Path | None = None) -> Path:
    """``infra/deepspeed/<name>.json`` for a bare name, else the path (relative: under home)."""
    if not name.endswith(".json") and "/" not in name:
        return DEEPSPEED_DIR / f"{name}.json"
    return resolve_path(name, home or default_home())


def default_experiments_dir() -> Path:
    return Path(os.environ.get(EXPERIMENTS_ENV) or REPO_ROOT / "experiments").resolve()
