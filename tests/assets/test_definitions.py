"""The code location loads from the repo's declarations with the expected graph."""

from __future__ import annotations

import dagster as dg


def test_definitions_module_loads_expected_graph() -> None:
    import definitions

    graph = definitions.defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    expected = {
        "corpus/reference",
        "corpus/docstrings",
        "corpus/code",
        "corpus/packages",
        "pool/baseline/docstrings",
        "pool/baseline/code",
        "pool/baseline/packages",
        "dedup/baseline/docstrings",
        "dedup/baseline/code",
        "dedup/baseline/packages",
        "quality_model/baseline",
        "filtered/baseline/docstrings",
        "filtered/baseline/code",
        "filtered/baseline/packages",
        "tokenizer/natural",
        "mixture/natural",
        "tokens/natural",
        "train/tiny/seed0",
        "train/tiny/seed2",
        "eval/tiny/seed1",
        "train/tiny_heuristic/seed0",
        "eval/tiny_heuristic/seed2",
        "pool/heuristic/code",
        "tokenizer/heuristic",
        "tokens/heuristic",
        "evalset/core_lite",
        "compare/quality_filter",
        "stats/leaderboard",
        "doremi/doremi/reference",
        "doremi/doremi/proxy",
        "doremi/doremi/weights",
        "mixture/doremi",
        "tokens/doremi",
        "mixture/bimix",
        "tokens/bimix",
        "train/tiny_doremi",
        "train/tiny_bimix",
        "stats/stage_decisions",
        "stats/stage_counts",
        "stats/stage_summary",
        "stats/quality_score_histogram",
    }
    assert expected <= keys

    def parents(key: str) -> set[str]:
        return {p.to_user_string() for p in graph.get(dg.AssetKey(key.split("/"))).parent_keys}

    assert parents("pool/baseline/code") == {"corpus/code"}
    # dedup is per shard: each shard decided against the recipe's index of earlier shards
    assert parents("dedup/baseline/code") == {"pool/baseline/code"}
    assert parents("filtered/baseline/code") == {
        "pool/baseline/code",
        "dedup/baseline/code",
        "quality_model/baseline",
    }
    assert "corpus/reference" in parents("quality_model/baseline")
    assert "dedup/baseline/packages" in parents("quality_model/baseline")
    assert parents("train/tiny/seed0") == {"tokens/natural", "mixture/natural"}
    assert {"train/tiny/seed0", "evalset/core_lite"} <= parents("eval/tiny/seed0")
    assert "train/tiny" not in keys  # a run with seeds is one asset per seed
    assert {"train/tiny_doremi", "evalset/core_lite"} <= parents("eval/tiny_doremi")
    # the study reads every seed of both runs; the eval set its check reads every token file
    assert parents("compare/quality_filter") == {
        *(f"eval/{r}/seed{k}" for r in ("tiny", "tiny_heuristic") for k in range(3)),
        "evalset/core_lite",
    }
    assert {"corpus/reference", "tokens/natural", "tokens/heuristic"} <= parents(
        "evalset/core_lite"
    )
    assert "eval/tiny/seed0" in parents("stats/leaderboard")
    check_keys = {c.to_user_string() for c in graph.asset_check_keys}
    assert "evalset/core_lite:excluded_from_training" in check_keys
    # DoReMi: reference and proxy train on natural's tokens; its weights feed mixture/doremi
    assert {"tokens/natural"} <= parents("doremi/doremi/reference")
    assert {"doremi/doremi/reference", "tokens/natural"} <= parents("doremi/doremi/proxy")
    assert parents("doremi/doremi/weights") == {"doremi/doremi/proxy"}
    assert {"doremi/doremi/weights", "tokenizer/natural"} <= parents("mixture/doremi")
    # the other mixtures share natural's tokenizer: no tokenizer asset of their own
    assert "tokenizer/doremi" not in keys and "tokenizer/bimix" not in keys
    assert "tokenizer/natural" in parents("mixture/bimix")
    assert "pool/baseline/code" in parents("stats/stage_decisions")
    # sharded stages share their source's dynamic partitions
    pdef = graph.get(dg.AssetKey(["pool", "baseline", "code"])).partitions_def
    assert isinstance(pdef, dg.DynamicPartitionsDefinition) and pdef.name == "shards_code"
    assert graph.get(dg.AssetKey(["corpus", "code"])).partitions_def == pdef
    assert graph.get(dg.AssetKey(["dedup", "baseline", "code"])).partitions_def == pdef
    assert graph.get(dg.AssetKey(["quality_model", "baseline"])).partitions_def is None
    # every stage asset carries a declaration-derived code version
    assert graph.get(dg.AssetKey(["pool", "baseline", "code"])).code_version.startswith("pool-r")
    assert {j.name for j in definitions.defs.jobs} >= {"stale_unpartitioned_job", "shards_code_job"}
    assert {s.name for s in definitions.defs.sensors} == {
        "shard_sensor",
        "default_automation_condition_sensor",
    }
    # automation: per-shard and data stages eager, training and evaluation nightly
    label = lambda k: graph.get(dg.AssetKey(k.split("/"))).automation_condition.get_label()  # noqa: E731
    assert label("pool/baseline/code") == label("evalset/core_lite") == "eager"
    assert label("quality_model/baseline") == "fixed by its declaration"  # not by new shards
    for key in ("train/tiny/seed0", "eval/tiny/seed0", "compare/quality_filter"):
        assert label(key).startswith("nightly"), key
    assert label("stats/stage_summary") == "eager"
    policy = graph.get(dg.AssetKey(["pool", "baseline", "code"])).backfill_policy
    assert policy is not None and policy.max_partitions_per_run == 1
    train = graph.get(dg.AssetKey(["train", "tiny", "seed0"])).backfill_policy
    assert train is not None and train.max_partitions_per_run is None
