"""Every kind of bad declaration from issue 12 is a DeclarationError naming the file and key.

One test per case: cycles, non-finite numbers, reversed ranges, impossible inheritance,
DeepSpeed typos and broken files, loosely typed storage options, duplicate keys and
declarations, undecodable and absurdly nested files, alias bombs, and the path policy.
"""

from __future__ import annotations

import re
import textwrap
import time
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from corpuslab.declarations import DeclarationError, load_experiment, resolve_path
from corpuslab.strict import Strict
from tests.conftest import TINY_EXPERIMENT, write_experiment

RUNS = "runs.yaml"
SOURCES = textwrap.dedent(TINY_EXPERIMENT["sources.yaml"]).lstrip("\n")  # to append lines to


def _dir(tmp_path: Path, **overrides: str) -> Path:
    files = dict(TINY_EXPERIMENT)
    files.update({k.replace("__", "."): v for k, v in overrides.items()})
    return write_experiment(tmp_path / "exp", files)


def _error(tmp_path: Path, home: Path | None = None, **overrides: str) -> str:
    folder = _dir(tmp_path, **overrides)
    with pytest.raises(DeclarationError) as info:
        load_experiment(folder, home=home or tmp_path / "home")
    return str(info.value)


def _runs(body: str) -> dict[str, str]:
    return {RUNS: "runs:\n" + body}


def test_a_two_run_init_from_cycle_is_named(tmp_path: Path) -> None:
    msg = _error(
        tmp_path,
        **_runs(
            "  a: {mixture: small, init_from: {run: b, layers: 1}}\n"
            "  b: {mixture: small, init_from: {run: a, layers: 1}}\n"
        ),
    )
    assert msg.startswith(str(tmp_path / "exp" / RUNS))
    assert "runs.a.init_from.run: runs inherit from each other in a cycle (a -> b -> a)" in msg


def test_non_finite_numbers_are_refused_everywhere(tmp_path: Path) -> None:
    """NaN/inf weights, eta, betas and DeepSpeed overrides; every model keeps the config."""
    mix = (
        "mixtures:\n  small: {recipe: lenient, token_budget: 100, strategy: manual,\n"
        "          weights: {docstrings: .nan, code: 1.0}}\n"
    )
    assert "mixtures.small.weights.docstrings: Input should be a finite number" in _error(
        tmp_path, **{"mixtures.yaml": mix}
    )
    dro = (
        TINY_EXPERIMENT["mixtures.yaml"]
        .replace("steps: 6,", "steps: 6,")
        .replace("reference: small", "reference: small\n              eta: .inf")
    )
    assert "mixtures.dro.doremi.eta: Input should be a finite number" in _error(
        tmp_path / "eta", **{"mixtures.yaml": dro}
    )
    runs = "  smoke: {mixture: small, train: {betas: [.nan, 0.95]}}\n"
    assert "runs.smoke.train.betas.0" in _error(tmp_path / "betas", **_runs(runs))
    runs = "  smoke: {mixture: small, deepspeed_overrides: {gradient_clipping: -.inf}}\n"
    msg = _error(tmp_path / "ds", **_runs(runs))
    assert "runs.smoke: Value error, deepspeed_overrides.gradient_clipping: NaN and infinity" in msg

    def subclasses(cls: type) -> list[type]:
        return [c for s in cls.__subclasses__() for c in (s, *subclasses(s))]

    assert all(m.model_config.get("allow_inf_nan") is False for m in subclasses(Strict))


def _range_pairs() -> list[tuple[type[Strict], str, str]]:
    """Every (min_x, max_x) and (min_x, x) pair of numeric fields in the declaration models."""
    import corpuslab.declarations  # noqa: F401 - imports every model
    import corpuslab.filters  # noqa: F401

    def subclasses(cls: type) -> list[type]:
        return [c for s in cls.__subclasses__() for c in (s, *subclasses(s))]

    pairs = []
    for model in set(subclasses(Strict)):
        fields = model.model_fields

        def numeric(field: str, fields: dict = fields) -> bool:
            ann = fields[field].annotation
            return bool({int, float} & set(typing.get_args(ann) or (ann,)))

        for name in fields:
            m = re.fullmatch(r"min_(\w+)", name)
            if not m or not numeric(name):
                continue
            for other in (f"max_{m.group(1)}", m.group(1)):
                if other in fields and numeric(other):
                    pairs.append((model, name, other))
    return sorted(pairs, key=lambda p: (p[0].__name__, p[1]))


def test_every_min_above_its_max_is_refused() -> None:
    pairs = _range_pairs()
    assert len(pairs) >= 3  # gopher words, gopher word length, train lr
    for model, lo, hi in pairs:
        with pytest.raises(ValidationError, match=rf"{lo}"):
            model.model_validate({lo: 5, hi: 2})


def test_init_from_layers_beyond_the_parent_and_other_widths_are_refused(tmp_path: Path) -> None:
    runs = (
        "  parent: {mixture: small, model: {n_layer: 2, n_head: 2, d_model: 32}}\n"
        "  child: {mixture: small, model: {n_layer: 4, n_head: 2, d_model: 32},\n"
        "          init_from: {run: parent, layers: 3}}\n"
    )
    msg = _error(tmp_path, **_runs(runs))
    assert "runs.child.init_from.layers: 3 exceeds the layers available" in msg
    assert "'parent' has n_layer 2" in msg
    wide = runs.replace("n_head: 2, d_model: 32},\n", "n_head: 4, d_model: 64},\n")
    msg = _error(tmp_path / "w", **_runs(wide.replace("layers: 3", "layers: 1")))
    assert "runs.child.init_from.run: 'parent' has (n_head, d_model, bias) (2, 32, False)" in msg


def test_a_typo_in_deepspeed_overrides_is_named_with_a_suggestion(tmp_path: Path) -> None:
    """Keys are checked against the base JSON plus DeepSpeed's documented keys."""
    typo = "  smoke: {mixture: small, deepspeed_overrides: {gradient_cliping: 0.5}}\n"
    msg = _error(tmp_path, **_runs(typo))
    assert "runs.smoke.deepspeed_overrides: unknown DeepSpeed key(s) gradient_cliping" in msg
    assert "did you mean gradient_clipping" in msg and "zero2.json" in msg
    nested = "  smoke: {mixture: small, deepspeed_overrides: {zero_optimization: {stag: 3}}}\n"
    msg = _error(tmp_path / "n", **_runs(nested))
    assert "zero_optimization.stag (did you mean stage" in msg
    ok = (
        "  smoke: {mixture: small, deepspeed_overrides: {wall_clock_breakdown: true,\n"
        "          zero_optimization: {stage: 1, reduce_bucket_size: 1000},\n"
        "          optimizer: {type: AdamW, params: {anything: 1}}}}\n"
    )
    exp = load_experiment(_dir(tmp_path / "ok", **_runs(ok)), home=tmp_path)
    assert exp.runs["smoke"].deepspeed_overrides["zero_optimization"]["stage"] == 1


def test_an_invalid_deepspeed_json_file_is_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "ds").mkdir(parents=True)
    (home / "ds" / "broken.json").write_text('{"train_batch_size": "auto",}')
    (home / "ds" / "list.json").write_text("[1, 2]")
    msg = _error(tmp_path, home, **_runs("  smoke: {mixture: small, deepspeed: ds/broken.json}\n"))
    assert "runs.smoke.deepspeed:" in msg and "broken.json is not valid JSON" in msg
    msg = _error(
        tmp_path / "l", home, **_runs("  smoke: {mixture: small, deepspeed: ds/list.json}\n")
    )
    assert "list.json must hold a JSON object" in msg


def test_storage_options_are_strictly_typed(tmp_path: Path) -> None:
    """``anonymous: 'false'`` was read as true (unsigned S3); now it is an error."""
    src = "  lake: {path: 's3://bucket/x', storage: {anonymous: 'false'}}\n"
    msg = _error(tmp_path, **{"sources.yaml": SOURCES + src})
    assert "sources.lake.storage.anonymous: Input should be a valid boolean" in msg
    secret = "  lake: {path: 's3://b/x', storage: {aws_secret_access_key: k}}\n"
    msg = _error(tmp_path / "s", **{"sources.yaml": SOURCES + secret})
    assert "aws_secret_access_key" in msg and "never from YAML" in msg
    fine = "  lake: {path: 's3://b/x', storage: {anonymous: false, max_attempts: 5}}\n"
    exp = load_experiment(
        _dir(tmp_path / "ok", **{"sources.yaml": SOURCES + fine}),
        home=tmp_path,
    )
    assert exp.sources["lake"].storage_options() == {"anonymous": False, "max_attempts": 5}


def test_duplicate_keys_and_declarations_across_files_are_refused(tmp_path: Path) -> None:
    dup = "runs:\n  smoke:\n    mixture: small\n    mixture: other\n"
    msg = _error(tmp_path, **{RUNS: dup})
    assert f"{tmp_path / 'exp' / RUNS}: runs.smoke.mixture: duplicate key at line 4" in msg
    twice = "recipes:\n  lenient: {sources: [code]}\nrecipes:\n  other: {sources: [code]}\n"
    msg = _error(tmp_path / "s", **{"more.yaml": twice})
    assert "more.yaml: recipes: duplicate key at line 3 (first at line 1)" in msg
    again = "recipes:\n  lenient: {sources: [code]}\n"
    msg = _error(tmp_path / "x", **{"zz.yaml": again})
    assert "zz.yaml: recipes.lenient: already declared in" in msg and "recipes.yaml" in msg


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    folder = _dir(tmp_path)
    (folder / "latin.yaml").write_bytes("# résumé\nsources: {}\n".encode("latin-1"))
    with pytest.raises(DeclarationError, match=r"latin.yaml: not UTF-8 text \(byte 0xe9"):
        load_experiment(folder, home=tmp_path)


def test_absurd_nesting_is_a_clear_error(tmp_path: Path) -> None:
    deep = "runs:\n  smoke: {mixture: small, deepspeed_overrides: {x: " + "[" * 5000 + "]" * 5000
    msg = _error(tmp_path, **{RUNS: deep + "}}\n"})
    assert "runs.yaml" in msg and ("nesting depth" in msg or "nested deeper" in msg)
    levels = "[" * 80 + "]" * 80
    msg = _error(tmp_path / "b", **{RUNS: f"runs:\n  smoke: {{mixture: small, x: {levels}}}\n"})
    assert "runs.smoke.x" in msg and "nested deeper than 64 levels" in msg


def test_an_alias_bomb_fails_fast(tmp_path: Path) -> None:
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for name in "bcdefghij":
        bomb += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
        prev = name
    started = time.perf_counter()
    msg = _error(tmp_path, **{"bomb.yaml": bomb})
    assert time.perf_counter() - started < 5
    assert "bomb.yaml: expands to more than 100,000 YAML nodes" in msg
    msg = _error(tmp_path / "r", **{"loop.yaml": "runs: &r\n  smoke: *r\n"})
    assert "loop.yaml" in msg and ("recursive" in msg or "not valid YAML" in msg)
    shared = (
        "runs:\n  smoke: {mixture: small, train: &t {steps: 8}}\n"
        "  two: {mixture: small, train: *t}\n"
    )
    exp = load_experiment(_dir(tmp_path / "ok", **{RUNS: shared}), home=tmp_path)
    assert exp.runs["two"].train.steps == 8  # ordinary aliases still work


def test_path_policy_for_every_path_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative: under $CORPUSLAB_HOME (``..`` only inside it); absolute and $VAR as written."""
    home = tmp_path / "home"
    (home / "raw" / "a").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.setenv("DATA", str(outside))
    monkeypatch.delenv("NOPE", raising=False)
    assert resolve_path("raw/a", home) == home / "raw" / "a"
    assert resolve_path("raw/../raw/a", home) == home / "raw" / "a"
    assert resolve_path(str(outside), home) == outside
    assert resolve_path("$DATA/x", home) == outside / "x"
    assert resolve_path("${DATA}/x", home) == outside / "x"
    with pytest.raises(ValueError, match="leaves the base folder"):
        resolve_path("../elsewhere", home)
    with pytest.raises(ValueError, match="undefined environment variable"):
        resolve_path("$NOPE/x", home)
    base = SOURCES
    msg = _error(tmp_path / "1", home, **{"sources.yaml": base + "  x: {path: ../elsewhere}\n"})
    assert "sources.x.path: relative path '../elsewhere' leaves the base folder" in msg
    msg = _error(tmp_path / "2", home, **{"sources.yaml": base + "  x: {path: $NOPE/raw}\n"})
    assert "sources.x.path: undefined environment variable(s) NOPE" in msg
    (home / "raw" / "file.jsonl").write_text("{}\n")
    msg = _error(tmp_path / "3", home, **{"sources.yaml": base + "  x: {path: raw/file.jsonl}\n"})
    assert "sources.x.path:" in msg and "is a file, not a folder of shards" in msg
    msg = _error(tmp_path / "4", home, **{"sources.yaml": base + "  x: {path: 'gs://b/x'}\n"})
    assert "sources.x: Value error, path: unsupported scheme 'gs'" in msg
    ok = base + "  x: {path: $DATA}\n  y: {path: raw/a}\n"
    exp = load_experiment(_dir(tmp_path / "5", **{"sources.yaml": ok}), home=home)
    from corpuslab.layout import Layout

    assert exp.sources["x"].resolve(Layout(home)) == str(outside)
    assert exp.sources["y"].resolve(Layout(home)) == str(home / "raw" / "a")
    # tokenizer files and DeepSpeed paths follow the same rule: relative is under the home
    tok = "mixtures:\n  small: {recipe: lenient, token_budget: 10, tokenizer: {file: ../t.json}}\n"
    msg = _error(tmp_path / "6", home, **{"mixtures.yaml": tok})
    assert "mixtures.small.tokenizer.file: relative path '../t.json' leaves the base" in msg
    ds = "  smoke: {mixture: small, deepspeed: ../zero2.json}\n"
    assert "runs.smoke.deepspeed: relative path" in _error(tmp_path / "7", home, **_runs(ds))
