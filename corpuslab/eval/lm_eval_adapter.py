"""A trained corpuslab run as an lm-evaluation-harness model (``lm_eval.api.model.TemplateLM``).

    from corpuslab.eval.lm_eval_adapter import CorpuslabLM
    lm = CorpuslabLM(run_dir="runs/tiny", tokenizer="data/tokenizer/.../tokenizer.json")
    lm_eval.simple_evaluate(model=lm, tasks=["my_task"],
                            task_manager=lm_eval.tasks.TaskManager(include_path="my_tasks/"))

or by name, ``model="corpuslab", model_args="run_dir=...,tokenizer=..."``. Any task lm-eval can
read from local YAML and JSONL runs offline against the run. Log-likelihoods come from the same
batched scorer as corpuslab's own evaluation (:func:`corpuslab.eval.scoring.score_requests`),
and ``tok_encode`` starts every sequence with the end-of-text id as corpuslab's scoring and
training streams do, so both tools give the same numbers for the same (context, continuation)
pairs. Rolling log-likelihood uses lm-eval's own disjoint windows; generation is greedy.

Needs the ``lm-eval`` package (in the ``dev`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from corpuslab.eval.scoring import Encoder, Request, greedy_generate, score_requests
from corpuslab.lmdata.tokenize import EOS
from corpuslab.training.checkpoints import load_model
from corpuslab.training.model import GPT


@register_model("corpuslab")
class CorpuslabLM(TemplateLM):
    """A corpuslab GPT (a run folder's weights, or a model object) with its tokenizer."""

    def __init__(
        self,
        run_dir: str | Path | None = None,
        tokenizer: str | Path | None = None,
        weights: str = "model.pt",
        batch_size: int | str = 32,
        max_gen_toks: int = 32,
        eos_token: str = EOS,
        model: GPT | None = None,
        **_: Any,
    ) -> None:
        super().__init__()
        if tokenizer is None:
            raise ValueError("CorpuslabLM needs tokenizer= (the run's tokenizer.json)")
        if model is None:
            if run_dir is None:
                raise ValueError("give exactly one of run_dir= or model=")
            model = load_model(run_dir, weights=weights)
        elif run_dir is not None:
            raise ValueError("give exactly one of run_dir= or model=")
        self.model = model
        self.encoder = Encoder.from_file(tokenizer, eos_token)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 32
        self.max_gen_toks = int(max_gen_toks)

    @property
    def eot_token_id(self) -> int:
        return self.encoder.eos_id

    @property
    def max_length(self) -> int:
        return self.model.config.seq_len

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        """Token ids of ``string``, preceded by the end-of-text id unless told not to."""
        ids = self.encoder.encode(string)
        return ids if add_special_tokens is False else [self.eot_token_id, *ids]

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.encoder.decode(tokens)

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], **kwargs: Any
    ) -> list[tuple[float, bool]]:
        reqs = [Request(tuple(ctx), tuple(cont)) for _, ctx, cont in requests]
        scores = score_requests(self.model, reqs, self.batch_size)
        out = [(s.logprob, s.greedy) for s in scores]
        for (key, _, _), res in zip(requests, out, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole strings over lm-eval's disjoint rolling windows."""
        out = []
        for req in requests:
            (string,) = req.args
            windows = [
                (None, *utils.make_disjoint_window(w))
                for w in utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string, add_special_tokens=False),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            total = sum(lp for lp, _ in self._loglikelihood_tokens(windows))
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy generation until one of the request's ``until`` strings or end-of-text."""
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = min(
                int(gen_kwargs.get("max_gen_toks", self.max_gen_toks)), self.max_length - 1
            )

            def stop(ids: list[int], until: list[str] = until) -> bool:
                return any(u in self.tok_decode(ids) for u in until)

            (ids,) = greedy_generate(
                self.model,
                [self.tok_encode(context)],
                max_new,
                stop,
                eos_id=self.eot_token_id,
                batch_size=1,
            )
            text = self.tok_decode(ids)
            for u in until:
                text = text.split(u)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out
