"""Declarations: valid experiments load; each kind of bad declaration names file, key, allowed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from corpuslab.declarations import DeclarationError, load_experiment
from corpuslab.stages.versions import fingerprint
from tests.conftest import TINY_EXPERIMENT, write_experiment


def _exp(tmp_path: Path, **overrides: str) -> Path:
    files = dict(TINY_EXPERIMENT)
    files.update(overrides)
    return write_experiment(tmp_path / "exp", files)


def test_repo_experiment_loads() -> None:
    exp = load_experiment(Path(__file__).resolve().parents[2] / "experiments")
    assert {"reference", "docstrings", "code", "packages"} <= set(exp.sources)
    assert exp.mixtures["natural"].recipe in exp.recipes
    assert exp.runs["tiny"].deepspeed_path().is_file()


def test_tiny_experiment_cross_references(tmp_path: Path) -> None:
    exp = load_experiment(_exp(tmp_path))
    assert exp.mixture_domains("small") == ["docstrings", "code"]
    assert exp.where("recipes", "strict").endswith("recipes.yaml")


def _error(tmp_path: Path, **overrides: str) -> str:
    with pytest.raises(DeclarationError) as info:
        load_experiment(_exp(tmp_path, **overrides))
    return str(info.value)


def test_unknown_key_lists_allowed(tmp_path: Path) -> None:
    msg = _error(
        tmp_path,
        **{
            "mixtures.yaml": """
        mixtures:
          small: {recipe: lenient, token_budget: 100, temperatur: 2}
    """
        },
    )
    assert "mixtures.yaml" in msg and "mixtures.small.temperatur" in msg
    assert "allowed:" in msg and "token_budget" in msg


def test_unknown_nested_key_lists_allowed(tmp_path: Path) -> None:
    msg = _error(
        tmp_path,
        **{
            "runs.yaml": """
        runs:
          smoke: {mixture: small, train: {stepz: 3}}
    """
        },
    )
    assert "runs.smoke.train.stepz" in msg and "micro_batch_size" in msg


def test_unknown_step_name(tmp_path: Path) -> None:
    msg = _error(
        tmp_path,
        **{
            "recipes.yaml": """
        recipes:
          lenient:
            sources: [docstrings]
            steps: [{word_cnt: {}}]
    """
        },
    )
    assert "recipes.yaml" in msg and "steps[0]" in msg and "word_cnt" in msg
    assert "gopher_quality" in msg and "paragraph_dedup" in msg  # allowed step names


def test_unknown_step_parameter(tmp_path: Path) -> None:
    msg = _error(
        tmp_path,
        **{
            "recipes.yaml": """
        recipes:
          lenient:
            sources: [docstrings]
            steps: [{gopher_quality: {minimum: 3}}]
    """
        },
    )
    assert "steps[0] (gopher_quality)" in msg and "min_words" in msg


def test_retired_step_names_its_replacement(tmp_path: Path) -> None:
    msg = _error(
        tmp_path,
        **{
            "recipes.yaml": """
        recipes:
          lenient:
            sources: [docstrings]
            steps: [{word_count: {min_words: 3}}]
    """
        },
    )
    assert "recipes.yaml: recipes.lenient" in msg and "steps[0]" in msg
    assert "'word_count' was retired" in msg and "gopher_quality (min_words, max_words)" in msg


def test_dangling_reference(tmp_path: Path) -> None:
    msg = _error(
        tmp_path,
        **{
            "mixtures.yaml": """
        mixtures:
          small: {recipe: nosuch, token_budget: 100}
    """
        },
    )
    assert "mixtures.small.recipe" in msg and "'nosuch'" in msg and "lenient, strict" in msg


def test_dangling_source_in_recipe(tmp_path: Path) -> None:
    msg = _error(
        tmp_path,
        **{
            "recipes.yaml": """
        recipes:
          lenient: {sources: [docstrings, web]}
    """
        },
    )
    assert "recipes.lenient.sources[1]" in msg and "'web'" in msg and "reference" in msg


def test_missing_deepspeed_file(tmp_path: Path) -> None:
    msg = _error(
        tmp_path,
        **{
            "runs.yaml": """
        runs:
          smoke: {mixture: small, deepspeed: zero9}
    """
        },
    )
    assert "runs.smoke.deepspeed" in msg and "zero9.json" in msg and "zero2" in msg


def test_missing_folder_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(DeclarationError, match="does not exist"):
        load_experiment(tmp_path / "nowhere")
    msg = _error(tmp_path, **{"runs.yaml": "runs: [unclosed\n"})
    assert "runs.yaml" in msg and "not valid YAML" in msg


def test_unknown_section_and_duplicate_name(tmp_path: Path) -> None:
    assert "allowed: sources, recipes, mixtures, runs" in _error(
        tmp_path, **{"extra.yaml": "recipies: {}\n"}
    )
    dup = tmp_path / "dup"
    write_experiment(dup)
    (dup / "more.yaml").write_text(
        textwrap.dedent("""
        sources:
          code: {path: raw/elsewhere}
    """)
    )
    with pytest.raises(
        DeclarationError, match=r"sources.code: already declared in .*(more|sources).yaml"
    ):
        load_experiment(dup)


def test_invalid_value_names_key(tmp_path: Path) -> None:
    msg = _error(
        tmp_path,
        **{
            "mixtures.yaml": """
        mixtures:
          small: {recipe: lenient, token_budget: 100, strategy: doremi_typo}
    """
        },
    )
    assert "mixtures.small.strategy" in msg and "natural" in msg and "doremi_typo" in msg


def test_manual_weights_must_name_domains(tmp_path: Path) -> None:
    msg = _error(
        tmp_path,
        **{
            "mixtures.yaml": """
        mixtures:
          small: {recipe: lenient, token_budget: 100, strategy: manual,
                  weights: {docstrings: 1, packages: 2}}
    """
        },
    )
    assert "mixtures.small.weights.packages" in msg and "allowed: code, docstrings" in msg


def test_fingerprint_tracks_only_the_declaration(tmp_path: Path) -> None:
    exp = load_experiment(_exp(tmp_path))
    a, b = exp.recipes["lenient"], exp.recipes["strict"]
    assert fingerprint(a.dedup) == fingerprint(b.dedup)  # same values, same version
    assert fingerprint(a.steps) != fingerprint(b.steps)


def test_inherited_run_must_exist_and_share_the_tokenizer(tmp_path: Path) -> None:
    msg = _error(
        tmp_path,
        **{
            "runs.yaml": """
        runs:
          smoke: {mixture: small, init_from: {run: ghost, layers: 1}}
    """
        },
    )
    assert "runs.smoke.init_from.run" in msg and "'ghost'" in msg
    files = dict(TINY_EXPERIMENT)
    files["mixtures.yaml"] = """
        mixtures:
          small: {recipe: lenient, token_budget: 100}
          other: {recipe: strict, token_budget: 100}
    """
    files["runs.yaml"] = """
        runs:
          parent: {mixture: other}
          smoke: {mixture: small, init_from: {run: parent, layers: 1}}
    """
    with pytest.raises(DeclarationError, match="tokenizer differs"):
        load_experiment(write_experiment(tmp_path / "mix", files))


def test_unknown_scale_lists_the_ladder(tmp_path: Path) -> None:
    msg = _error(
        tmp_path,
        **{
            "runs.yaml": """
        runs:
          smoke: {mixture: small, model: {scale: dclm-7b}}
    """
        },
    )
    assert "runs.smoke.model" in msg and "dclm-6.9b" in msg and "cpu-1m" in msg


def _mixtures(body: str) -> str:
    return "mixtures:\n" + textwrap.indent(textwrap.dedent(body), "  ")


BASE_MIX = """
small:
  recipe: lenient
  token_budget: 20000
  tokenizer: {vocab_size: 512}
"""


def test_strategy_parameters_must_match_the_strategy(tmp_path: Path) -> None:
    msg = _error(
        tmp_path,
        **{
            "mixtures.yaml": _mixtures(
                BASE_MIX + "hot: {recipe: lenient, token_budget: 10, strategy: temperature}\n"
            )
        },  # fmt: skip
    )
    assert "mixtures.yaml: mixtures.hot" in msg and "'temperature' is needed" in msg
    msg = _error(
        tmp_path,
        **{
            "mixtures.yaml": _mixtures(
                BASE_MIX + "d: {recipe: lenient, token_budget: 10, strategy: doremi}\n"
            )
        },  # fmt: skip
    )
    assert "mixtures.d" in msg and "'doremi' is needed" in msg
    msg = _error(
        tmp_path,
        **{
            "mixtures.yaml": _mixtures(
                BASE_MIX + "m: {recipe: lenient, token_budget: 10, strategy: blend}\n"
            )
        },  # fmt: skip
    )
    assert "mixtures.m.strategy" in msg and "'doremi'" in msg and "'entropy'" in msg
    exp = load_experiment(
        _exp(
            tmp_path / "ok",
            **{
                "mixtures.yaml": _mixtures(
                    BASE_MIX + "hot: {recipe: lenient, token_budget: 10, "
                    "strategy: temperature, temperature: 2.0}\n"
                )
            },  # fmt: skip
        )
    )
    assert exp.mixtures["hot"].temperature == 2.0


def test_doremi_reference_must_be_a_mixture_over_the_same_split(tmp_path: Path) -> None:
    dro = """
dro:
  recipe: lenient
  strategy: doremi
  token_budget: 10
  doremi: {reference: %s}
"""
    msg = _error(tmp_path, **{"mixtures.yaml": _mixtures(BASE_MIX + dro % "nowhere")})
    assert "mixtures.dro.doremi.reference: unknown 'nowhere'; allowed: small" in msg
    other = "other: {recipe: strict, token_budget: 10}\n"
    msg = _error(tmp_path, **{"mixtures.yaml": _mixtures(BASE_MIX + other + dro % "other")})
    assert "mixtures.dro.doremi.reference: 'other' differs in recipe" in msg
    msg = _error(
        tmp_path,
        **{"mixtures.yaml": _mixtures(BASE_MIX + (dro % "small") + "  eta: 0\n")},  # fmt: skip
    )
    assert "mixtures.dro" in msg and "doremi" in msg


def test_tokenizer_sharing_and_files_are_checked(tmp_path: Path) -> None:
    shared = "b: {recipe: lenient, token_budget: 10, tokenizer: {mixture: %s}}\n"
    msg = _error(tmp_path, **{"mixtures.yaml": _mixtures(BASE_MIX + shared % "zzz")})
    assert "mixtures.b.tokenizer.mixture: unknown 'zzz'; allowed: small" in msg
    split = "b: {recipe: lenient, token_budget: 10, heldout_fraction: 0.2, " \
            "tokenizer: {mixture: small}}\n"  # fmt: skip
    msg = _error(tmp_path, **{"mixtures.yaml": _mixtures(BASE_MIX + split)})
    assert "differs in heldout_fraction" in msg
    both = "b: {recipe: lenient, token_budget: 10, tokenizer: {mixture: small, vocab_size: 999}}\n"
    msg = _error(tmp_path, **{"mixtures.yaml": _mixtures(BASE_MIX + both)})
    assert "vocab_size only apply to a trained tokenizer" in msg
    missing = "f: {recipe: lenient, token_budget: 10, tokenizer: {file: tok/missing.json}}\n"
    msg = _error(tmp_path, **{"mixtures.yaml": _mixtures(BASE_MIX + missing)})
    assert "mixtures.f.tokenizer.file:" in msg and "missing.json is not a file" in msg
    ok = load_experiment(
        _exp(tmp_path / "ok", **{"mixtures.yaml": _mixtures(BASE_MIX + shared % "small")})
    )
    assert ok.tokenizer_owner("b") == "small" and ok.tokenizer_owner("small") == "small"
