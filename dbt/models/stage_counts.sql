-- Per source and stage: documents by outcome (kept, or the step and reason that dropped them).
with by_outcome as (
    select
        stage,
        recipe,
        source,
        case when kept then 'kept' else step || ':' || reason end as outcome,
        count(*) as documents
    from {{ ref("stage_decisions") }}
    group by all
)
select
    *,
    round(documents / sum(documents) over (partition by stage, recipe, source), 4) as fraction
from by_outcome
order by stage, recipe, source, documents desc
