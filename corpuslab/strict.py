"""The one pydantic base of every declaration, parameter set and run spec in corpuslab.

Unknown keys, NaN and infinity are errors, and a validated model is immutable, so a typo in a
YAML file fails at load time instead of being silently ignored, and a declaration hashed into a
``code_version`` cannot change after it was hashed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Forbid unknown keys and non-finite floats; freeze after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
