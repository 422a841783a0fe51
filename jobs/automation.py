"""The automation policy: when each asset is materialized without anyone asking.

Declarative automation (``dg.AutomationCondition``), evaluated by the automation sensor and by
``corpuslab materialize``: an asset is requested when it is missing, its declaration (code
version) changed, or an input's data version changed, and only once every input exists, none
is being written and every blocking check of its inputs passed. Per-shard and cheap stages run
as soon as that holds (``EAGER``); training, evaluation and studies wait for the nightly tick
(``NIGHTLY``), so a new raw shard is curated at once and trained on overnight.
"""

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import dagster as dg

AC = dg.AutomationCondition
NIGHTLY_CRON = "0 3 * * *"


def _since_last_handled(cond: dg.AutomationCondition[Any]) -> dg.AutomationCondition[Any]:
    """``cond.since_last_handled()`` for a condition over assets.

    Dagster annotates that method's ``self`` as ``AutomationCondition[AssetOrCheckKey]``, whose
    type parameter is invariant, so a checker rejects it on the asset conditions it is meant
    for (Dagster's own ``AutomationCondition.eager()`` builds the same expression). Typed
    ``AutomationCondition[Any]`` here, the call checks.
    """
    return cond.since_last_handled()


_UPDATED = (
    AC.newly_missing() | AC.code_version_changed() | AC.any_deps_match(AC.data_version_changed())
).with_label("missing, declaration changed or an input's data changed")
_READY = (
    (~AC.any_deps_missing()).with_label("inputs materialized")
    & (~AC.any_deps_in_progress()).with_label("no input being written")
    & (~AC.in_progress()).with_label("not being written")
    & AC.all_deps_blocking_checks_passed().with_label("inputs' blocking checks passed")
).with_label("ready")

EAGER = (_since_last_handled(_UPDATED) & _READY).with_label("eager")
# What `corpuslab materialize` evaluates: like EAGER, but an asset missing from the start (a new
# home) is requested too, where Dagster's automation waits for it to become newly missing.
_CHANGED = AC.code_version_changed().with_label("declaration changed") | AC.any_deps_match(
    AC.data_version_changed()
).with_label("an input's data changed")
NOW = (
    (AC.missing().with_label("missing") | _since_last_handled(_CHANGED)).with_label("due") & _READY
).with_label("now")
# The quality model is fixed by its declaration and its recorded training sample: new shards are
# scored by it, not a reason to retrain. It is requested when missing or when its recipe's
# declaration changed (then the stage keeps the model if the sample's texts are unchanged);
# retraining otherwise is an explicit action (`corpuslab materialize --retrain RECIPE`).
# It also waits while an input is still to be rebuilt (its own declaration changed and it was
# not materialized since) or an input's input just changed: an edited recipe re-runs its pool,
# then its dedup, and the sample is checked against what both leave.
_DECLARED = AC.code_version_changed().with_label("declaration changed")
_SETTLED = (
    ~AC.any_deps_match(AC.code_version_changed().since(AC.newly_updated()))
    & ~AC.any_deps_match(AC.any_deps_match(AC.data_version_changed()))
).with_label("inputs settled")
FIXED = (_since_last_handled(AC.newly_missing() | _DECLARED) & _READY & _SETTLED).with_label(
    "fixed by its declaration"
)
# The command runs ticks back to back and stops at the first that requests nothing, so it
# cannot wait on a one-tick condition; it holds back an asset downstream of others still
# changing itself (`cli.materialize.split_ready`).
FIXED_NOW = (
    (AC.missing().with_label("missing") | _since_last_handled(_DECLARED)).with_label("due") & _READY
).with_label("fixed by its declaration (now)")
NIGHTLY = (
    AC.cron_tick_passed(NIGHTLY_CRON).since_last_handled() & _since_last_handled(_UPDATED) & _READY
).with_label(f"nightly ({NIGHTLY_CRON})")

# Per-shard stages backfill one shard a run (a failure stays in its shard); global stages in one.
SHARD_BACKFILL = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
GLOBAL_BACKFILL = dg.BackfillPolicy.single_run()


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """Evaluates every asset's condition; launches what is due (several shards as a backfill).

    Stopped by default: turn it on in the UI (Automation) to let the daemon keep the home fresh;
    ``corpuslab materialize`` evaluates the same conditions on demand.
    """
    return dg.AutomationConditionSensorDefinition(
        "default_automation_condition_sensor",
        target=dg.AssetSelection.all(),
        emit_backfills=True,
        default_status=dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=30,
        description="Declarative automation of every corpuslab asset (see jobs/automation.py).",
    )


# Stages that train or evaluate models wait for the night; the rest follow their inputs.
NIGHTLY_STAGES = frozenset({"train", "eval", "doremi", "compare"})
FIXED_STAGES = frozenset({"quality_model"})
_NOW: ContextVar[bool] = ContextVar("corpuslab_automation_now", default=False)


def condition_for(key: dg.AssetKey) -> dg.AutomationCondition:
    """The declared condition of an asset (``NOW`` for all inside :func:`eager_everywhere`)."""
    if key.path[0] in FIXED_STAGES:
        return FIXED_NOW if _NOW.get() else FIXED
    if _NOW.get():
        return NOW
    return NIGHTLY if key.path[0] in NIGHTLY_STAGES else EAGER


@contextlib.contextmanager
def eager_everywhere() -> Iterator[None]:
    """Build definitions whose every asset is eager: what ``corpuslab materialize`` evaluates."""
    token = _NOW.set(True)
    try:
        yield
    finally:
        _NOW.reset(token)
