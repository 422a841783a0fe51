-- One row per source and stage: in = kept + dropped.
select
    stage,
    recipe,
    source,
    count(*) as documents_in,
    count(*) filter (where kept) as kept,
    count(*) filter (where not kept) as dropped
from {{ ref("stage_decisions") }}
group by all
order by recipe, source, stage
