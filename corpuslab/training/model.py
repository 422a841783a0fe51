"""A small GPT in one file, after nanoGPT: the model every experiment of the testbed trains.

Pre-LayerNorm decoder blocks, learned positions, tied input/output embeddings, causal attention
through ``F.scaled_dot_product_attention`` and nanoGPT's initialization (GPT-2 style, with the
residual projections scaled by ``1 / sqrt(2 * n_layer)``). The training loss can carry PaLM's
z-loss, and :func:`inherit_weights` starts a model from a trained one's first blocks (Inheritune).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from corpuslab.training.runspec import ModelDims

IGNORE_INDEX = -1  # targets with this value are neither scored nor counted in the mean loss


@dataclass
class GPTConfig:
    """Shape of the model; saved beside every checkpoint so it can be rebuilt."""

    vocab_size: int  # size of the tokenizer's vocabulary (ids must be < vocab_size)
    seq_len: int  # context length; also the size of the position table
    n_layer: int  # number of transformer blocks
    n_head: int  # attention heads per block; must divide d_model
    d_model: int  # width of the residual stream
    dropout: float = 0.0  # 0.0 for pretraining, as in nanoGPT
    bias: bool = False  # biases in Linear and LayerNorm; False is slightly better and faster

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.seq_len, self.n_layer, self.n_head, self.d_model) < 1:
            raise ValueError(f"every size in GPTConfig must be >= 1, got {self}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dims(cls, dims: ModelDims) -> GPTConfig:
        """The config of a run spec's (torch-free) model dims."""
        return cls(**dims.model_dump())

    def dims(self) -> ModelDims:
        """The torch-free dims of this config (what a run spec declares)."""
        return ModelDims(**asdict(self))


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's own cannot drop only the bias)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and earlier ones."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Causal attention; ``attn_mask`` (bool, True = may attend) replaces the causal mask."""
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_mask is None,
        )
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The position-wise feed-forward layer, 4x wide with GELU."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, 4 * config.d_model, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.d_model, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One pre-LayerNorm transformer block: attention then MLP, each on a residual branch."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.d_model, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.d_model, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


class Trunk(nn.Module):
    """Embeddings, blocks and final norm: nanoGPT's ``transformer`` ModuleDict, with types.

    Same submodules in the same order (so the same state-dict keys, ``transformer.wte.weight``
    ..., and the same initialization under a seed); a ModuleDict's entries would be typed
    ``Tensor | Module`` to a checker.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.d_model, bias=config.bias)


class GPT(nn.Module):
    """Decoder-only language model with tied token embedding and output head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = Trunk(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.last_z_loss: torch.Tensor | None = None
        # Weight tying (Press & Wolf 2017): one matrix both embeds tokens and scores them.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: scale the init of residual projections so the stream's variance stays O(1).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position table (nanoGPT's convention).

        The token embedding is counted once: it is the output head's weight too.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def estimate_flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward): 6N plus the attention term.

        As in nanoGPT's ``estimate_mfu`` (PaLM appendix B): ``6N + 12 * L * H * Q * T``.
        """
        cfg = self.config
        head_dim = cfg.d_model // cfg.n_head
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_head * head_dim * cfg.seq_len

    def hidden_states(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states (B, T, d_model); ``lm_head`` of them gives the logits.

        By default every row is one causal sequence at positions ``0..T-1``. Evaluation packs
        several sequences that share a prefix into one row instead: ``positions`` (B, T) gives
        each token its position and ``attn_mask`` (B, 1, T, T) bool, True where a query may
        attend a key, says which tokens see which (e.g. each continuation sees the shared
        context and its own earlier tokens, never another continuation).
        """
        _, t = idx.shape
        if positions is None:
            if t > self.config.seq_len:
                raise ValueError(f"sequence of length {t} exceeds seq_len={self.config.seq_len}")
            positions = torch.arange(t, dtype=torch.long, device=idx.device)
        elif positions.numel() and int(positions.max()) >= self.config.seq_len:
            raise ValueError(
                f"position {int(positions.max())} exceeds the context of seq_len="
                f"{self.config.seq_len}"
            )
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))
        for block in self.transformer.h:
            x = block(x, attn_mask)
        return self.transformer.ln_f(x)

    def _logits(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden_states(idx))

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, z_loss: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of shape (B, T, vocab) and, given targets, the mean training loss in nats.

        The loss is the cross-entropy plus, when ``z_loss > 0``, PaLM's auxiliary
        ``z_loss * mean(log(Z)^2)`` (Z the softmax normalizer), which keeps the logits from
        drifting; the z-term's detached value is left in ``self.last_z_loss`` for logging.
        """
        logits = self._logits(idx)
        if targets is None:
            return logits, None
        flat, tgt = logits.view(-1, logits.size(-1)), targets.reshape(-1)
        if z_loss <= 0.0:
            self.last_z_loss = None
            return logits, F.cross_entropy(flat, tgt, ignore_index=IGNORE_INDEX)
        # One log-sum-exp serves both terms: CE = lse - logit[target].
        lse = torch.logsumexp(flat.float(), dim=-1)
        keep = tgt != IGNORE_INDEX
        picked = flat.gather(1, tgt.clamp(min=0).unsqueeze(1)).squeeze(1).float()
        count = keep.sum().clamp(min=1)
        ce = ((lse - picked) * keep).sum() / count
        z_term = z_loss * (lse.square() * keep).sum() / count
        self.last_z_loss = z_term.detach()
        return logits, ce + z_term

    def per_token_loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Unreduced negative log-likelihood in nats, shape (B, T); 0 where target is ignored."""
        logits = self._logits(idx)
        nll = F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        return nll.view(targets.shape)


def inherit_weights(
    child: GPT, parent_state: Mapping[str, torch.Tensor], parent_config: GPTConfig, layers: int
) -> list[str]:
    """Inheritune (Sanyal et al. 2024): start ``child`` from a trained parent's first blocks.

    Copies the token embedding (the tied output head too), the position table (its first
    ``child.seq_len`` rows), blocks ``0 .. layers-1`` and the final norm; later child blocks keep
    their initialization. Widths, heads, vocabulary and bias must match. Returns the names of
    the child's tensors that were overwritten.
    """
    cc, pc = child.config, parent_config
    for field in ("d_model", "n_head", "vocab_size", "bias"):
        if getattr(cc, field) != getattr(pc, field):
            raise ValueError(
                f"cannot inherit: child {field}={getattr(cc, field)} but parent has "
                f"{getattr(pc, field)}"
            )
    if not 1 <= layers <= min(pc.n_layer, cc.n_layer):
        raise ValueError(
            f"layers={layers} must lie in [1, min(parent n_layer={pc.n_layer}, "
            f"child n_layer={cc.n_layer})]"
        )
    if cc.seq_len > pc.seq_len:
        raise ValueError(f"child seq_len={cc.seq_len} exceeds the parent's {pc.seq_len}")
    copied: list[str] = []
    own = child.state_dict()
    with torch.no_grad():
        for name, target in own.items():
            if name.startswith("transformer.h."):
                if int(name.split(".")[2]) >= layers:
                    continue
            elif not name.startswith(("transformer.wte.", "transformer.wpe.", "transformer.ln_f.")):
                continue  # lm_head.weight is wte's tensor: copied through it
            source = parent_state[name]
            if name == "transformer.wpe.weight":
                source = source[: cc.seq_len]
            if source.shape != target.shape:
                raise ValueError(f"cannot inherit {name}: shape {source.shape} != {target.shape}")
            target.copy_(source)
            copied.append(name)
    return copied
