{# Paths of the stage outputs under CORPUSLAB_HOME (set by the Makefile and the dbt resource). #}
{% macro data_path(rel) -%}
'{{ env_var("CORPUSLAB_HOME", "../.corpuslab") }}/data/{{ rel }}'
{%- endmacro %}
