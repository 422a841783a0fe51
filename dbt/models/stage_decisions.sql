{{ config(meta={"corpuslab_upstream": ["corpus", "pool", "filtered"]}) }}
-- Every document's keep/drop decision at every stage, as written by the stage assets.
select
    stage,
    recipe,
    source,
    shard,
    id,
    kept,
    coalesce(step, '') as step,
    coalesce(reason, '') as reason
from read_parquet(
    {{ data_path("decisions/*/*/*/*.parquet") }},
    hive_partitioning = true,
    union_by_name = true
)
