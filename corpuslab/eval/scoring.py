"""Scoring ICL items on a corpuslab GPT: continuation log-likelihoods, batched, contexts shared.

Tokenization follows lm-evaluation-harness (``TemplateLM._encode_pair``): trailing whitespace of
the context moves to the front of the continuation, the pair is encoded jointly and split at
the length of the context's own encoding, and every sequence starts with the end-of-text id (as
each document does in a training stream, and as ``bpb.py`` scores held-out text), so the
adapter in :mod:`corpuslab.eval.lm_eval_adapter` scores exactly what this module scores. A
context longer than the model's window keeps its last tokens (llm-foundry's and lm-eval's
left truncation); a continuation longer than the window, which both refuse, is scored in
window-sized chunks, each token predicted once from the window before it.

Efficiency: the alternatives of a multiple-choice item share their context, so the context and
*all* continuations go into one row, each continuation at positions right after the context
and attending to the context and its own earlier tokens only (a tree-shaped mask); the context
is run once instead of once per choice. The output head, the largest matrix of a small model,
runs only at the positions that predict a continuation token.

Item metrics (as nanochat's ``core_eval.py`` and llm-foundry define accuracy, plus
DataDecide's continuous metrics):

- ``acc``: the choice with the highest *mean* log-likelihood per token is right (llm-foundry,
  DCLM's CORE, nanochat); ``acc_sum``: highest summed log-likelihood (lm-eval's ``acc``);
  ``acc_char``: highest log-likelihood per byte (lm-eval's ``acc_norm``, OLMES);
  language modeling: every continuation token is the greedy (argmax) prediction;
  question answering: the greedy generation, normalized, starts with a right answer.
- ``p_correct``: probability of the right choice among the choices, each choice's
  probability taken per byte (``exp(ll / bytes)``, normalized over choices); ``margin``: that
  probability minus the best wrong choice's (DataDecide's CORRECT PROB and MARGIN).
- ``gold_nll`` / ``gold_bytes``: negative log-likelihood (nats) and UTF-8 bytes of the right
  continuation, whose ratio over items is the gold bits-per-byte.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from corpuslab.eval.tasks import CHOICE_TYPES, Item, TaskDecl, prompts
from corpuslab.lmdata.tokenize import EOS
from corpuslab.training.model import GPT


@dataclass(frozen=True)
class Request:
    """Token ids of one (context, continuation) pair; ``n_bytes`` of the continuation text."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]
    n_bytes: int = 0


@dataclass(frozen=True)
class Score:
    """Summed log-likelihood (nats) of a continuation, its tokens, and whether it is greedy."""

    logprob: float
    tokens: int
    greedy: bool


class Encoder:
    """Text to token ids as the scorer sees them (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer, eos_id: int) -> None:
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_file(cls, path: str | Path, eos_token: str = EOS) -> Encoder:
        tok = Tokenizer.from_file(str(path))
        eos = tok.token_to_id(eos_token)
        if eos is None:
            raise ValueError(f"tokenizer {path} has no {eos_token!r} token to start sequences with")
        return cls(tok, eos)

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text (no special tokens), batch-encoded and cached."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:  # encode_batch_fast: no character offsets, which scoring never needs
            encoded = self.tokenizer.encode_batch_fast(todo, add_special_tokens=False)
            for text, enc in zip(todo, encoded, strict=True):
                self._cache[text] = enc.ids
        return [self._cache[t] for t in texts]

    def encode(self, text: str) -> list[int]:
        return self.encode_many([text])[0]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def pairs(self, pairs: Sequence[tuple[str, str]]) -> list[Request]:
        """Requests of (context, continuation) pairs, split as lm-evaluation-harness splits."""
        moved = []
        for ctx, cont in pairs:
            n = len(ctx) - len(ctx.rstrip())
            if n:
                ctx, cont = ctx[:-n], ctx[-n:] + cont
            moved.append((ctx, cont))
        texts = [t for ctx, cont in moved for t in (ctx, ctx + cont)]
        encoded = self.encode_many(texts)
        out = []
        for i, (ctx, cont) in enumerate(moved):
            c_ids, whole = encoded[2 * i], encoded[2 * i + 1]
            cont_ids = whole[len(c_ids) :]
            if not cont_ids:
                raise ValueError(f"continuation {cont!r} encodes to no tokens after {ctx[-40:]!r}")
            out.append(
                Request(
                    context=(self.eos_id, *c_ids),
                    continuation=tuple(cont_ids),
                    n_bytes=len(cont.encode("utf-8")),
                )
            )
        return out


@dataclass
class _Row:
    """One packed input row: a context, then each branch's continuation inputs."""

    tokens: list[int]
    positions: list[int]
    branch: list[int]  # -1: the shared context; b >= 0: continuation b of this row
    context_len: int
    branches: int = 0
    # (request index, row position whose output predicts the token, target token)
    preds: list[tuple[int, int, int]] | None = None


def _new_row(ctx: tuple[int, ...]) -> _Row:
    return _Row(list(ctx), list(range(len(ctx))), [-1] * len(ctx), len(ctx), 0, [])


def pack_requests(
    requests: Sequence[Request], seq_len: int, row_tokens: int | None = None
) -> list[_Row]:
    """Rows that score every request once, contexts shared (see the module docstring).

    A context is left-truncated so that context + continuation predictions fit ``seq_len``;
    a continuation longer than the window is scored in consecutive chunks of up to
    ``seq_len`` tokens, each chunk seeing the window of tokens before it (every token is
    predicted once, as ``bpb.py`` scores long documents). Pieces with the same context share
    rows of at most ``row_tokens`` tokens (default ``seq_len``; one long piece may exceed it).
    """
    limit = row_tokens or seq_len
    groups: dict[tuple[int, ...], list[tuple[int, tuple[int, ...]]]] = {}
    for r, req in enumerate(requests):
        cont = req.continuation
        if not cont:
            raise ValueError(f"request {r} has an empty continuation")
        if not req.context:
            raise ValueError(f"request {r} has no context token (start with the EOS id)")
        seq, n_ctx = (*req.context, *cont), len(req.context)
        for a in range(0, len(cont), seq_len):
            b = min(len(cont), a + seq_len)
            start = max(0, n_ctx + b - 1 - seq_len)  # the window the last prediction sees
            groups.setdefault(seq[start : n_ctx + a], []).append((r, cont[a:b]))
    rows: list[_Row] = []
    for ctx, members in groups.items():
        row = _new_row(ctx)
        for r, cont in members:
            need = len(cont) - 1
            if row.branches and len(row.tokens) + need > limit:
                rows.append(row)
                row = _new_row(ctx)
            b, start = row.branches, len(row.tokens)
            row.tokens += cont[:-1]
            row.positions += range(row.context_len, row.context_len + need)
            row.branch += [b] * need
            predictors = [row.context_len - 1, *range(start, start + need)]
            assert row.preds is not None
            row.preds += [(r, p, t) for p, t in zip(predictors, cont, strict=True)]
            row.branches += 1
        rows.append(row)
    return rows


def _batch_tensors(
    chunk: Sequence[_Row],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Right-padded (ids, positions, mask) of a chunk; positions and mask None when causal."""
    width = max(len(r.tokens) for r in chunk)
    ids = np.zeros((len(chunk), width), dtype=np.int64)
    for b, row in enumerate(chunk):
        ids[b, : len(row.tokens)] = row.tokens
    if all(r.branches <= 1 for r in chunk):  # plain sequences: the model's own causal path
        return torch.from_numpy(ids), None, None
    pos = np.zeros((len(chunk), width), dtype=np.int64)
    branch = np.full((len(chunk), width), -2, dtype=np.int64)  # -2: padding
    for b, row in enumerate(chunk):
        n = len(row.tokens)
        pos[b, :n] = row.positions
        branch[b, :n] = row.branch
    br = torch.from_numpy(branch)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    q, k = br[:, :, None], br[:, None, :]
    # context keys are visible to everyone after them; a branch sees only its own keys;
    # padding sees padding (so no query row is fully masked)
    mask = causal & ((k == -1) & (q != -2) | (k == q))
    return torch.from_numpy(ids), torch.from_numpy(pos), mask[:, None]


@torch.inference_mode()
def score_requests(
    model: GPT,
    requests: Sequence[Request],
    batch_size: int = 32,
    row_tokens: int | None = None,
    greedy: bool = True,
) -> list[Score]:
    """Log-likelihood of every request's continuation given its context (see the module).

    ``greedy=False`` skips the argmax over the vocabulary (``Score.greedy`` is then False):
    multiple choice never needs it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not requests:
        return []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = pack_requests(requests, model.config.seq_len, row_tokens)
    rows.sort(key=lambda r: len(r.tokens), reverse=True)
    logprob = np.zeros(len(requests), dtype=np.float64)
    tokens = np.zeros(len(requests), dtype=np.int64)
    is_greedy = np.full(len(requests), greedy, dtype=bool)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids, pos, mask = _batch_tensors(chunk)
        width = ids.shape[1]
        hidden = model.hidden_states(
            ids.to(device),
            None if pos is None else pos.to(device),
            None if mask is None else mask.to(device),
        )
        preds = np.array([(b * width + p, r, t) for b, row in enumerate(chunk)
                          for r, p, t in row.preds or ()], dtype=np.int64)  # fmt: skip
        flat = torch.from_numpy(preds[:, 0]).to(device)
        target = torch.from_numpy(preds[:, 2]).to(device)
        logits = model.lm_head(hidden.reshape(-1, hidden.shape[-1])[flat]).float()
        picked = logits.gather(1, target[:, None]).squeeze(1)
        # log-softmax at the target only: no (predictions x vocabulary) output is written
        lp = (picked - torch.logsumexp(logits, dim=-1)).double().cpu().numpy()
        req_idx = preds[:, 1]
        np.add.at(logprob, req_idx, lp)
        np.add.at(tokens, req_idx, 1)
        if greedy:  # the target holds the maximum logit (ties count as greedy)
            hit = (picked >= logits.max(dim=-1).values).cpu().numpy()
            np.logical_and.at(is_greedy, req_idx, hit)
    model.train(was_training)
    return [
        Score(float(lp), int(n), bool(g))
        for lp, n, g in zip(logprob, tokens, is_greedy, strict=True)
    ]


@torch.inference_mode()
def greedy_generate(
    model: GPT,
    prompts_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop: Callable[[list[int]], bool] | None = None,
    eos_id: int | None = None,
    batch_size: int = 32,
) -> list[list[int]]:
    """Greedy continuations of each prompt: at most ``max_new_tokens``, ending early at
    ``eos_id`` (not included) or when ``stop(generated)`` is true. Prompts keep their last
    ``seq_len - max_new_tokens`` tokens."""
    seq_len = model.config.seq_len
    if not 1 <= max_new_tokens < seq_len:
        raise ValueError(f"max_new_tokens={max_new_tokens} must lie in [1, seq_len={seq_len})")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    keep = seq_len - max_new_tokens
    seqs = [list(p)[-keep:] for p in prompts_ids]
    if any(not s for s in seqs):
        raise ValueError("every prompt needs at least one token")
    out: list[list[int]] = [[] for _ in seqs]
    for start in range(0, len(seqs), batch_size):
        live = list(range(start, min(start + batch_size, len(seqs))))
        for _ in range(max_new_tokens):
            if not live:
                break
            width = max(len(seqs[i]) for i in live)
            ids = torch.zeros((len(live), width), dtype=torch.long)
            for b, i in enumerate(live):
                ids[b, : len(seqs[i])] = torch.tensor(seqs[i])
            hidden = model.hidden_states(ids.to(device))
            last = torch.tensor([len(seqs[i]) - 1 for i in live], device=hidden.device)
            nxt = model.lm_head(hidden[torch.arange(len(live)), last]).argmax(-1).tolist()
            still = []
            for i, t in zip(live, nxt, strict=True):
                if eos_id is not None and t == eos_id:
                    continue
                seqs[i].append(t)
                out[i].append(t)
                if stop is None or not stop(out[i]):
                    still.append(i)
            live = still
    model.train(was_training)
    return out


# SQuAD's answer normalization, as llm-foundry's generation accuracy applies it.
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's normalization)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def _choice_metrics(ll: np.ndarray, tokens: np.ndarray, nbytes: np.ndarray, gold: int) -> dict:
    per_byte = ll / nbytes
    p = np.exp(per_byte - per_byte.max())
    p /= p.sum()
    wrong = np.delete(p, gold)
    return {
        "pred": int(np.argmax(ll / tokens)),
        "acc": float(np.argmax(ll / tokens) == gold),
        "acc_sum": float(np.argmax(ll) == gold),
        "acc_char": float(np.argmax(per_byte) == gold),
        "p_correct": float(p[gold]),
        "margin": float(p[gold] - wrong.max()),
    }


def score_task(
    model: GPT,
    encoder: Encoder,
    task: TaskDecl,
    items: Sequence[Item],
    k: int,
    batch_size: int = 32,
    row_tokens: int | None = None,
) -> list[dict[str, Any]]:
    """Per-item results of ``task`` with ``k`` demonstrations (fields: see the module)."""
    alts = prompts(task, items, k)
    flat = [pair for item_alts in alts for pair in item_alts]
    requests = encoder.pairs(flat)
    need_greedy = task.icl_task_type == "language_modeling"
    scores = score_requests(model, requests, batch_size, row_tokens, greedy=need_greedy)
    results: list[dict[str, Any]] = []
    at = 0
    for item, item_alts in zip(items, alts, strict=True):
        n = len(item_alts)
        reqs, scs = requests[at : at + n], scores[at : at + n]
        at += n
        ll = np.array([s.logprob for s in scs])
        toks = np.array([s.tokens for s in scs], dtype=np.float64)
        nbytes = np.array([max(r.n_bytes, 1) for r in reqs], dtype=np.float64)
        res: dict[str, Any] = {
            "id": item.id,
            "ll": [round(float(v), 6) for v in ll],
            "tokens": [int(v) for v in toks],
            "bytes": [int(v) for v in nbytes],
            "gold": item.gold,
            "gold_nll": float(-ll[item.gold]),
            "gold_bytes": int(nbytes[item.gold]),
        }
        if item.category is not None:
            res["category"] = item.category
        if task.icl_task_type in CHOICE_TYPES:
            res |= _choice_metrics(ll, toks, nbytes, item.gold)
        elif task.icl_task_type == "language_modeling":
            res["acc"] = float(scs[0].greedy)
        results.append(res)
    if task.icl_task_type == "question_answering":
        _generate_answers(model, encoder, task, items, alts, results, batch_size)
    return results


def _generate_answers(
    model: GPT,
    encoder: Encoder,
    task: TaskDecl,
    items: Sequence[Item],
    alts: Sequence[Sequence[tuple[str, str]]],
    results: list[dict[str, Any]],
    batch_size: int,
) -> None:
    """Question answering: greedy generation matched against the answer and its aliases."""
    answers = [(item.continuations[0], *item.aliases) for item in items]
    longest = max(len(encoder.encode(" " + a)) for group in answers for a in group)
    max_new = min(longest, model.config.seq_len - 1)
    stops = task.early_stopping_criteria or []

    def stop(generated: list[int]) -> bool:
        return bool(stops) and any(s in encoder.decode(generated) for s in stops)

    # the context right-stripped, as llm-foundry generates from it (a trailing space derails)
    contexts = [[encoder.eos_id, *encoder.encode(a[0][0].rstrip())] for a in alts]
    generated = greedy_generate(
        model, contexts, max_new, stop, eos_id=encoder.eos_id, batch_size=batch_size
    )
    for res, ids, group in zip(results, generated, answers, strict=True):
        text = encoder.decode(ids)
        for s in stops:
            text = text.split(s)[0]
        norm = normalize_answer if task.do_normalization else str.strip
        got = norm(text)
        res["generation"] = text
        res["acc"] = float(any(got.startswith(norm(a)) for a in group))
