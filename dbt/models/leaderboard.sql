{{ config(meta={"corpuslab_upstream": ["eval"]}) }}
-- Every evaluated run per suite: the mean over its seeds of CORE, mean gold bits per byte and
-- mean held-out bits per byte (final weights), the seed-to-seed spread, ranked by CORE.
-- Intervals and paired differences are compare/<study>'s job; this is the overview.
{% set files = data_path("eval/**/metrics.parquet") %}
{% if execute %}
    {% set n = run_query("select count(*) from glob(" ~ files ~ ")").columns[0].values()[0] %}
{% else %}
    {% set n = 1 %}
{% endif %}
{% if n > 0 %}
with final as (
    select run, seed, suite, metric, value
    from read_parquet({{ files }}, union_by_name = true)
    where weights = 'eval'
),
per_seed as (
    select
        run,
        seed,
        suite,
        max(value) filter (where metric = 'core') as core,
        max(value) filter (where metric = 'bpb') as gold_bpb,
        avg(value) filter (where metric like 'heldout.%.bpb') as heldout_bpb
    from final
    group by run, seed, suite
),
per_run as (
    select
        suite,
        run,
        count(*) as seeds,
        avg(core) as core,
        stddev_samp(core) as core_seed_sd,
        avg(gold_bpb) as gold_bpb,
        avg(heldout_bpb) as heldout_bpb
    from per_seed
    group by suite, run
)
select
    *,
    rank() over (partition by suite order by core desc nulls last) as rank
from per_run
order by suite, rank
{% else %}
select
    null::varchar as suite,
    null::varchar as run,
    null::bigint as seeds,
    null::double as core,
    null::double as core_seed_sd,
    null::double as gold_bpb,
    null::double as heldout_bpb,
    null::bigint as rank
where false
{% endif %}
