{{ config(meta={"corpuslab_upstream": ["filtered"]}) }}
-- Quality classifier score distribution per recipe and source, in 20 bins over [0, 1].
select
    recipe,
    source,
    least(floor(score * 20), 19) / 20 as bin_start,
    count(*) as documents
from read_parquet(
    {{ data_path("scores/*/*/*.parquet") }},
    hive_partitioning = true
)
group by all
order by recipe, source, bin_start
