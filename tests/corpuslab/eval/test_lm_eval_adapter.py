"""The lm-evaluation-harness adapter: lm-eval's own evaluator equals corpuslab's scoring."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

lm_eval = pytest.importorskip(
    "lm_eval", reason="lm-eval is not installed: pip install -e '.[dev]' provides it"
)

from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from corpuslab.eval.lm_eval_adapter import CorpuslabLM  # noqa: E402
from corpuslab.eval.scoring import Encoder, Request, score_requests, score_task  # noqa: E402
from corpuslab.eval.suite import next_sentence_items  # noqa: E402
from corpuslab.eval.tasks import TaskDecl  # noqa: E402
from corpuslab.ingest.democorpus import reference_records  # noqa: E402
from corpuslab.training.model import GPT, GPTConfig  # noqa: E402


@pytest.fixture(scope="module")
def model() -> GPT:
    """A random 2-layer GPT with a 256-token window (the items' sentences fit it)."""
    torch.manual_seed(1)
    return GPT(GPTConfig(vocab_size=512, seq_len=256, n_layer=2, n_head=2, d_model=32)).eval()


@pytest.fixture()
def offline_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval reads local JSONL through ``datasets``: offline, with a private cache."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))


def local_task(folder: Path, name: str, items: list) -> Path:
    """An lm-eval multiple-choice task over an llm-foundry-format JSONL file."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(i.to_json("multiple_choice")) + "\n" for i in items))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: query\n"
        "doc_to_choice: choices\n"
        "doc_to_target: gold\n"
        'target_delimiter: " "\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return folder


def test_lm_eval_evaluator_through_the_adapter_equals_corpuslab_scoring(
    model: GPT, tokenizer_path: Path, tmp_path: Path, offline_hf: None
) -> None:
    """Per-choice log-likelihoods, acc and acc_norm agree item by item."""
    docs = [(r["id"], r["text"]) for r in list(reference_records())[:60]]
    items = next_sentence_items(docs, 12)
    folder = local_task(tmp_path / "tasks", "corpuslab_next_sentence", items)
    lm = CorpuslabLM(model=model, tokenizer=tokenizer_path, batch_size=8)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=["corpuslab_next_sentence"],
        task_manager=TaskManager(include_path=str(folder)),
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = sorted(out["samples"]["corpuslab_next_sentence"], key=lambda s: s["doc_id"])
    ours = score_task(
        model,
        Encoder.from_file(tokenizer_path),
        TaskDecl(
            label="ns", icl_task_type="multiple_choice", dataset_uri="-", random_baseline=0.25
        ),  # fmt: skip
        items,
        k=0,
    )
    assert len(samples) == len(ours) == 12
    acc_norm = []
    for sample, mine, item in zip(samples, ours, items, strict=True):
        theirs = [ll for ll, _ in sample["filtered_resps"]]
        assert theirs == pytest.approx(mine["ll"], abs=1e-4)
        assert sample["acc"] == mine["acc_sum"]  # lm-eval's acc: highest summed likelihood
        lengths = np.array([len(c) for c in item.continuations], dtype=float)
        acc_norm.append(float(np.argmax(np.array(mine["ll"]) / lengths) == item.gold))
        assert sample["acc_norm"] == acc_norm[-1]
    result = out["results"]["corpuslab_next_sentence"]
    assert result["acc,none"] == pytest.approx(np.mean([m["acc_sum"] for m in ours]))
    assert result["acc_norm,none"] == pytest.approx(np.mean(acc_norm))


def test_a_run_folder_loads_by_registered_name(
    model: GPT, tokenizer_path: Path, tmp_path: Path
) -> None:
    """``model="corpuslab"`` with run_dir/tokenizer args; rolling likelihood of a short text."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save(model.state_dict(), run / "model.pt")
    (run / "model_config.json").write_text(json.dumps(asdict(model.config)))
    lm = get_model("corpuslab").create_from_arg_string(
        f"run_dir={run},tokenizer={tokenizer_path},batch_size=4"
    )
    assert isinstance(lm, CorpuslabLM) and lm.max_length == 256
    text = "The pass statement does nothing."
    ids = Encoder.from_file(tokenizer_path).encode(text)

    class Req:
        args = (text,)

    (rolling,) = lm.loglikelihood_rolling([Req()])
    (direct,) = score_requests(model, [Request((lm.eot_token_id,), tuple(ids))])
    assert rolling == pytest.approx(direct.logprob, abs=1e-4)
    assert math.isfinite(rolling) and rolling < 0
