"""
The GPT language model: GPT-2's architecture, in one file.

What it is: learned token + position embeddings, a stack of pre-LayerNorm transformer blocks
(causal self-attention, GELU MLP), a final LayerNorm and a language-model head tied to the token
embedding. Parameter names are GPT-2's (`wte`, `wpe`, `c_attn`, `c_proj`, `ln_f`, `lm_head`), so
Hugging Face weights load with a near one-to-one copy and nanoGPT checkpoints load unchanged.

What it is not: a tokenizer, a training loop or a sampler UI (see train.py and sample.py).

    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65))
    logits, loss = model(idx, targets)              # idx, targets: (B, T) int64
    out = model.generate(idx, max_new_tokens=100)   # KV-cached sampling
"""

import inspect
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

# nanoGPT's checkpoints store exactly these model_args; keep them so either repo reads the other's.
NANOGPT_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


@dataclass
class GPTConfig:
    block_size: int = 1024   # longest context, in tokens (size of the learned position table)
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0     # on embeddings, attention weights and residual branches (training only)
    bias: bool = True        # biases in Linear and LayerNorm layers, like GPT-2; False is a bit faster
    gelu: str = "exact"      # 'exact' (erf, nanoGPT) or 'tanh' (GPT-2/Hugging Face 'gelu_new')

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.gelu not in ("exact", "tanh"):
            raise ValueError(f"gelu must be 'exact' or 'tanh', got {self.gelu!r}")

    def to_model_args(self):
        """nanoGPT's seven keys, plus any other field only when it differs from its default."""
        args = {k: getattr(self, k) for k in NANOGPT_MODEL_ARGS}
        for f in fields(self):
            if f.name not in args and getattr(self, f.name) != f.default:
                args[f.name] = getattr(self, f.name)
        return args


class KVCache:
    """
    Keys and values of every layer for a batch being decoded, preallocated for `max_len` positions
    so a decode step writes in place instead of concatenating.

    Buffers are (n_layer, B, n_kv_head, max_len, head_dim); n_kv_head is where grouped-query
    attention will shrink them. `length` is how many positions are filled (the same for every
    row). Rows with shorter prompts are left-padded: `pad[b]` pad slots lead row b, and they are
    masked out of attention and skipped by the position count. A sliding window or rotary
    positions only change which slots are kept and which positions are handed out.
    """

    def __init__(self, n_layer, batch_size, n_kv_head, max_len, head_dim):
        self.shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.max_len = max_len
        self.k = self.v = None   # allocated on first write, in the dtype autocast produces
        self.reset()

    def reset(self, pad=None):
        """Empty the cache; `pad` is a (B,) int64 tensor of left-padding per row, or None."""
        self.length = 0
        self.pad = pad if pad is not None and bool(pad.any()) else None

    def positions(self, T, device):
        """Position ids for the next T tokens: (T,) or, with padding, (B, T)."""
        pos = torch.arange(self.length, self.length + T, device=device)
        if self.pad is not None:
            pos = (pos[None, :] - self.pad[:, None]).clamp(min=0)
        return pos

    def write(self, layer, k, v):
        """Store k, v (B, n_kv_head, T, hd) at the next T slots; return all filled slots."""
        T = k.size(2)
        end = self.length + T
        assert end <= self.max_len, f"KV cache overflow: {end} > {self.max_len}"
        if self.k is None or self.k.dtype != k.dtype:
            self.k = torch.zeros(self.shape, dtype=k.dtype, device=k.device)
            self.v = torch.zeros(self.shape, dtype=v.dtype, device=v.device)
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def attn_mask(self, T, device):
        """Boolean mask (True = may attend) for T new queries, or None when plain causal works."""
        S = self.length + T
        if self.pad is None and (T == 1 or self.length == 0):
            return None  # decode step sees everything; fresh prefill is plain causal
        q_pos = torch.arange(self.length, S, device=device)[:, None]  # (T, 1)
        k_pos = torch.arange(S, device=device)[None, :]               # (1, S)
        mask = k_pos <= q_pos                                         # (T, S) causal
        if self.pad is not None:
            real_key = k_pos[None] >= self.pad[:, None, None]         # (B, 1, S)
            # a pad query may see itself, so no row of the softmax is empty (its output is unused)
            mask = mask[None] & (real_key | (k_pos == q_pos)[None])    # (B, T, S)
            mask = mask[:, None]                                      # (B, 1, T, S)
        return mask

    def advance(self, T):
        self.length += T


class _Mask(torch.autograd.Function):
    """y = x * mask, and the same mask on the way back (mask already holds 0 or 1/(1-p))."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class Dropout(nn.Dropout):
    """nn.Dropout with a faster mask on the CPU.

    torch's CPU dropout draws one random number per element (bernoulli_), which took about a
    quarter of a bf16 training step of train_don_char.py here. This draws 64 random bits at a
    time and cuts them into four 16-bit numbers, so each element is dropped with probability
    round(p * 65536) / 65536 (0.2 -> 0.20000) from the same torch random stream. Other devices
    keep torch's own kernel.
    """

    fast_cpu = True  # False = torch's kernel everywhere (nanoGPT's path; train.py --fast_cpu=False)

    def forward(self, x):
        if not (self.fast_cpu and self.training and self.p > 0 and x.device.type == "cpu"):
            return super().forward(x)
        if self.p >= 1:
            return torch.zeros_like(x)
        n = x.numel()
        bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        draws = bits.view(torch.int16)[:n].view(x.shape)  # uniform over [-32768, 32767]
        cut = round(self.p * 65536) - 32768
        scale = 1.0 / (1.0 - (cut + 32768) / 65536)  # P(keep) = 1 - round(p * 65536) / 65536
        # 0 or scale in x's dtype; a 0/1 byte conversion then a multiply is 5x faster than
        # torch.where(draws >= cut, scale, 0) with scalar operands on a CPU
        mask = (draws >= cut).view(torch.uint8).to(x.dtype).mul_(scale)
        return _Mask.apply(x, mask)


class CausalSelfAttention(nn.Module):

    fast_cpu = True  # False = torch's fused kernel on CPUs too (nanoGPT's path)

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = Dropout(config.dropout)
        self.resid_dropout = Dropout(config.dropout)
        # fused kernel (flash / memory-efficient) when torch has it; tests flip this to compare
        self.flash = hasattr(F, "scaled_dot_product_attention")

    def forward(self, x, cache=None, layer=0):
        B, T, C = x.size()
        nh, hd = self.n_head, C // self.n_head
        qkv = self.c_attn(x)  # (B, T, 3C)
        dropout_p = self.dropout if self.training else 0.0
        # On a CPU, torch's fused kernel has no dropout (it falls back to an fp32 math path) and
        # its bf16 backward is slow (4.5x its fp32 one at the seeds' CPU shape, torch 2.13), so
        # those cases take the batched-matmul path below, which measured faster in both.
        fused = self.flash and not (self.fast_cpu and x.device.type == "cpu"
                                    and (dropout_p > 0 or qkv.dtype == torch.bfloat16))
        if cache is None and not fused:
            # one copy lays out every head's q, k and v contiguously: (3, B*nh, T, hd)
            q, k, v = qkv.view(B, T, 3, nh, hd).permute(2, 0, 3, 1, 4).reshape(3, B * nh, T, hd).unbind(0)
            y = self._attend_unfused(q, k, v, causal_bias(T, q.dtype, q.device))
        else:
            q, k, v = (t.view(B, T, nh, hd).transpose(1, 2) for t in qkv.split(C, dim=2))  # (B, nh, T, hd)
            if cache is None:
                mask, is_causal = None, True
            else:
                mask = cache.attn_mask(T, x.device)
                is_causal = mask is None and T > 1  # a fresh prefill: keys are exactly the T queries
                k, v = cache.write(layer, k, v)  # (B, nh, S, hd), S = cached + T
            if fused:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                   is_causal=is_causal)
            else:
                S = k.size(2)
                if is_causal:
                    bias = causal_bias(T, q.dtype, q.device)
                elif mask is not None:  # (T, S) or (B, 1, T, S), True = may attend
                    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
                    bias = bias.masked_fill_(~mask, float("-inf"))
                    if bias.dim() == 4:
                        bias = bias.expand(B, nh, T, S).reshape(B * nh, T, S)
                else:
                    bias = None
                y = self._attend_unfused(q.reshape(B * nh, T, hd), k.reshape(B * nh, S, hd),
                                         v.reshape(B * nh, S, hd), bias)
        y = y.view(B, nh, T, hd).transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def _attend_unfused(self, q, k, v, bias):
        """softmax(q k^T / sqrt(hd) + bias) v, heads batched: q (N, T, hd), k and v (N, S, hd),
        bias (T, S) or (N, T, S) with -inf where attention is not allowed, or None."""
        scale = 1.0 / math.sqrt(q.size(-1))
        if bias is None:
            att = torch.bmm(q, k.transpose(1, 2)) * scale
        else:
            att = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale)  # (N, T, S)
        att = F.softmax(att, dim=-1)  # bf16 input: the CPU kernel still sums in fp32
        att = self.attn_dropout(att)
        return torch.bmm(att, v)  # (N, T, hd)


_CAUSAL_BIAS = {}


def causal_bias(T, dtype, device):
    """(T, T) additive causal mask, 0 on and below the diagonal and -inf above; made once."""
    key = (T, dtype, str(device))
    if key not in _CAUSAL_BIAS:
        with torch.inference_mode(False):  # a normal tensor, even if first made while sampling
            allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril()
            _CAUSAL_BIAS[key] = torch.zeros(T, T, dtype=dtype, device=device).masked_fill_(
                ~allowed, float("-inf"))
    return _CAUSAL_BIAS[key]


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the output projection reuses the token embedding (GPT-2 does this too)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2 paper: scale residual projections by 1/sqrt(2 * n_layer) so the stream stays O(1)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameter count; position embeddings are left out by default (token ones are tied)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def forward(self, idx, targets=None, cache=None, all_logits=False):
        """
        idx (B, T) token ids. With targets (B, T): logits for every position and the mean
        cross-entropy (targets == -1 are ignored). Without: logits of the last position only,
        (B, 1, V), unless all_logits. With a KVCache the tokens continue what it holds.
        """
        B, T = idx.size()
        pos = torch.arange(T, device=idx.device) if cache is None else cache.positions(T, idx.device)
        top = (cache.length if cache is not None else 0) + T
        if cache is None or cache.pad is None:
            assert top <= self.config.block_size, \
                f"sequence of {top} tokens is longer than block_size {self.config.block_size}"
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (T, C) or (B, T, C)
        x = self.transformer.drop(tok_emb + pos_emb)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.advance(T)
        x = self.transformer.ln_f(x)

        if targets is not None:
            logits = self.lm_head(x)  # (B, T, V)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1),
                                   ignore_index=-1)
            return logits, loss
        # inference: only the last position is needed to pick the next token
        logits = self.lm_head(x if all_logits else x[:, [-1], :])  # (B, 1 or T, V)
        return logits, None

    def crop_block_size(self, block_size):
        """Shrink the context (e.g. load GPT-2's 1024 but train at 256): keep the first positions."""
        assert block_size <= self.config.block_size, \
            f"can only shrink block_size: {block_size} > {self.config.block_size}"
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, model_type, override_args=None):
        """GPT-2 weights ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl' or a local Hugging Face
        GPT-2 directory) via transformers. Only dropout may be overridden."""
        from hf_gpt2 import load_hf_gpt2  # transformers is only needed on this path
        override_args = override_args or {}
        unknown = set(override_args) - {"dropout"}
        if unknown:
            raise ValueError(f"from_pretrained can only override dropout, not {sorted(unknown)}")
        config_args, state = load_hf_gpt2(model_type)
        config_args.update(override_args)
        model = cls(GPTConfig(**config_args))
        model.load_state_dict(state)
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, fused=True):
        """AdamW; weight decay only on matrices (matmul weights, embeddings), not biases/norms.
        fused=False takes torch's default implementation instead (on a CPU a per-tensor loop,
        which is what nanoGPT gets there)."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # fused AdamW is one kernel per step on CUDA and on CPU (torch >= 2.4); else foreach
        if not fused:
            return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)
        fused = "fused" in inspect.signature(torch.optim.AdamW).parameters \
            and device_type in ("cuda", "cpu")
        extra = {"fused": True} if fused else {"foreach": True}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    def flops_per_token(self):
        """Training FLOPs per token: 6N for the matmuls plus the attention scores (PaLM, app. B)."""
        N = self.get_num_params()
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * N + 12 * L * H * Q * T

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops=312e12):
        """Model FLOPs utilisation: achieved FLOP/s over `peak_flops` (A100 bf16 by default)."""
        flops_per_iter = self.flops_per_token() * self.config.block_size * fwdbwd_per_iter
        return flops_per_iter / dt / peak_flops

    # ---------------------------------------------------------------- generation

    @torch.inference_mode()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, **kwargs):
        """
        Append max_new_tokens sampled tokens to idx (B, T) and return (B, T + max_new_tokens).
        temperature 0 is greedy. Other keyword arguments go to generate_stream.
        """
        new = [tok for tok in self.generate_stream(idx, max_new_tokens, temperature, top_k,
                                                   top_p, **kwargs)]
        if not new:
            return idx
        return torch.cat([idx, torch.stack(new, dim=1).to(idx.device)], dim=1)

    @torch.inference_mode()  # cheaper than no_grad: no version counters on decode tensors
    def generate_stream(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                        generator=None, use_cache=True, context_window=None, window_chunk=1):
        """
        Yield the next token of every row, (B,) int64, max_new_tokens times.

        prompts: a (B, T) tensor or a list of B token lists (lengths may differ: left-padded).
        Each token is predicted from at most `context_window` (default block_size) previous
        tokens, exactly as nanoGPT crops its context. With the cache, the window's keys/values
        are kept and each step costs one token; when the window is full the last
        `context_window - window_chunk + 1` tokens are prefilled again and `window_chunk - 1`
        cached steps follow. window_chunk=1 (default) is exact crop semantics (a full-window
        prefill per token past the window, learned positions leave no cheaper exact way);
        larger chunks amortise that cost but let the context shrink to
        context_window - window_chunk + 1 right after each re-prefill.
        use_cache=False is the reference: nanoGPT's loop, a full forward per token.
        """
        window = min(context_window or self.config.block_size, self.config.block_size)
        if window < 1:
            raise ValueError(f"context_window must be >= 1, got {context_window}")
        if not 1 <= window_chunk <= window:
            raise ValueError(f"window_chunk must be in [1, {window}], got {window_chunk}")
        device = self.lm_head.weight.device
        seqs = [list(map(int, row)) for row in (prompts.tolist() if torch.is_tensor(prompts)
                                                else prompts)]
        if any(len(s) == 0 for s in seqs):
            raise ValueError("every prompt needs at least one token")
        B = len(seqs)
        cache = None
        if use_cache:
            cfg = self.config
            cache = KVCache(cfg.n_layer, B, cfg.n_head, window, cfg.n_embd // cfg.n_head)
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = self._full_window_logits(seqs, window, device)
            elif cache.length == 0 or cache.length >= window:
                keep = window if cache.length == 0 else window - window_chunk + 1
                ctx = [s[-keep:] for s in seqs]
                idx, pad = _left_pad(ctx, device)
                cache.reset(pad)
                logits, _ = self(idx, cache=cache)
            else:
                last = torch.tensor([[s[-1]] for s in seqs], dtype=torch.long, device=device)
                logits, _ = self(last, cache=cache)
            nxt = sample_next(logits[:, -1, :].float(), temperature, top_k, top_p, generator)
            for s, t in zip(seqs, nxt.tolist()):
                s.append(t)
            yield nxt

    def _full_window_logits(self, seqs, window, device):
        """nanoGPT's step: forward the last `window` tokens, no cache (rows one by one if ragged)."""
        if len({len(s) for s in seqs}) == 1:
            idx = torch.tensor([s[-window:] for s in seqs], dtype=torch.long, device=device)
            return self(idx)[0]
        rows = [self(torch.tensor([s[-window:]], dtype=torch.long, device=device))[0]
                for s in seqs]
        return torch.cat(rows, dim=0)


def set_fast_cpu(model, enabled):
    """Turn this file's CPU speed-ups (Dropout's mask, the batched-matmul attention path) on or
    off for one model; off is torch's own kernels, as nanoGPT runs on a CPU."""
    for module in model.modules():
        if isinstance(module, (Dropout, CausalSelfAttention)):
            module.fast_cpu = enabled


def _left_pad(rows, device):
    """Stack token lists of different lengths right-aligned: (B, T) ids and (B,) pad counts."""
    T = max(len(r) for r in rows)
    pad = torch.tensor([T - len(r) for r in rows], dtype=torch.long, device=device)
    idx = torch.tensor([[0] * (T - len(r)) + r for r in rows], dtype=torch.long, device=device)
    return idx, pad


def filter_logits(logits, top_k=None, top_p=None):
    """Set to -inf every logit outside the top_k, and outside the smallest set of tokens whose
    probabilities add up to at least top_p (the most likely token always stays)."""
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = logits.clone()
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[..., [-1]]  # (B, 1)
        logits[logits < kth] = float("-inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of strictly better tokens
        sorted_logits[mass_before >= top_p] = float("-inf")
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Pick one token per row from (B, V) logits; temperature 0 means argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    probs = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
