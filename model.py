"""
The GPT language model: GPT-2's architecture, in one file.

What it is: learned token + position embeddings, a stack of pre-LayerNorm transformer blocks
(causal self-attention, GELU MLP), a final LayerNorm and a language-model head tied to the token
embedding. Parameter names are GPT-2's (`wte`, `wpe`, `c_attn`, `c_proj`, `ln_f`, `lm_head`), so
Hugging Face weights load with a near one-to-one copy and nanoGPT checkpoints load unchanged.
Attention variants (GPTConfig: pos_emb, n_kv_head, attn_window/window_pattern, kv_share,
attention='linear') are fields whose defaults are exactly that GPT-2 attention. What is kept
from earlier tokens (a KV cache, TransformerXL's memory) lives in smallgpt/kvcache.py, the
decode loop in smallgpt/generate.py, the CPU speed-ups in smallgpt/fast_cpu.py.

What it is not: a tokenizer, a training loop or a sampler UI (see train.py and sample.py).

    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65))
    logits, loss = model(idx, targets)              # idx, targets: (B, T) int64
    out = model.generate(idx, max_new_tokens=100)   # KV-cached sampling
"""

import inspect
import math
from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.nn as nn
from torch.nn import functional as F

from smallgpt import generate
from smallgpt.checkpoint import CheckpointError, clean_state_dict
from smallgpt.fast_cpu import Dropout, causal_bias
from smallgpt.hf.convert import load_hf
from smallgpt.linear_attention import causal_linear_attention, feature_map

# nanoGPT's checkpoints store exactly these model_args; keep them so either repo reads the other's.
NANOGPT_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")
# GPTConfig's attention-variant fields below; train.py and bench.py take each as a setting of that name
VARIANT_KEYS = ("pos_emb", "rope_theta", "n_kv_head", "attn_window", "window_pattern", "kv_share",
                "attention")


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
    # attention variants; every default is GPT-2's attention exactly (README: Attention variants)
    pos_emb: str = "learned"  # 'learned' (table wpe), 'rope' (rotary q and k) or 'none'
    rope_theta: float = 10000.0  # rotary base: the slowest pair turns once per ~2*pi*theta tokens
    n_kv_head: int = 0       # key/value heads (0 = n_head; 1 = multi-query); must divide n_head
    attn_window: int = 0     # tokens a windowed layer sees, itself included (0 = full causal)
    window_pattern: str = "" # 'S' windowed / 'L' full per layer, repeated ('' = all windowed)
    kv_share: int = 1        # this many neighbouring layers share one set of keys/values
    attention: str = "softmax"  # 'softmax', or 'linear' (elu+1 kernel, smallgpt/linear_attention.py)

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.gelu not in ("exact", "tanh"):
            raise ValueError(f"gelu must be 'exact' or 'tanh', got {self.gelu!r}")
        if self.pos_emb not in ("learned", "rope", "none"):
            raise ValueError(f"pos_emb must be 'learned', 'rope' or 'none', got {self.pos_emb!r}")
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"pos_emb='rope' needs an even head size, got n_embd/n_head="
                             f"{self.n_embd // self.n_head}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")
        if self.n_kv_head < 0 or self.n_head % self.kv_heads != 0:
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} "
                             f"(0 = n_head, 1 = multi-query)")
        if self.attn_window < 0:
            raise ValueError(f"attn_window must be >= 0 (0 = full causal), got {self.attn_window}")
        if self.window_pattern.strip("SL") or (self.window_pattern and self.attn_window == 0):
            raise ValueError(f"window_pattern={self.window_pattern!r} must be letters S (windowed) "
                             f"and L (full), with attn_window > 0 (now {self.attn_window})")
        if not 1 <= self.kv_share <= self.n_layer:
            raise ValueError(f"kv_share must be in [1, n_layer={self.n_layer}], got {self.kv_share}")
        if self.attention not in ("softmax", "linear"):
            raise ValueError(f"attention must be 'softmax' or 'linear', got {self.attention!r}")
        if self.attention == "linear" and self.pos_emb == "rope":
            # turning q and k after elu+1 lets scores go negative (the normaliser can reach 0);
            # turning them before, the scores no longer depend on relative position alone
            raise ValueError("attention='linear' takes pos_emb='learned' or 'none', not 'rope': "
                             "the rotation and the positive feature map don't combine")
        if self.attention == "linear" and (self.attn_window or self.kv_share > 1):
            raise ValueError(f"attention='linear' keeps one running state per layer: use "
                             f"attn_window=0 and kv_share=1 (got {self.attn_window}, {self.kv_share})")

    @property
    def kv_heads(self):
        return self.n_kv_head or self.n_head

    @property
    def kv_groups(self):
        """How many sets of keys/values the model computes (and a KVCache holds)."""
        return -(-self.n_layer // self.kv_share)

    def layer_window(self, layer):
        """The attention window of one layer in tokens, 0 = full causal."""
        pattern = self.window_pattern or "S"
        return self.attn_window if pattern[layer % len(pattern)] == "S" else 0

    def to_model_args(self):
        """nanoGPT's seven keys, plus any other field only when it differs from its default."""
        args = {k: getattr(self, k) for k in NANOGPT_MODEL_ARGS}
        for f in fields(self):
            if f.name not in args and getattr(self, f.name) != f.default:
                args[f.name] = getattr(self, f.name)
        return args


class CausalSelfAttention(nn.Module):
    """
    Causal self-attention of one layer. With the defaults it is GPT-2's: c_attn projects to
    q, k, v of n_head heads each. Variants (GPTConfig): n_kv_head < n_head shrinks k and v to
    fewer heads, each shared by n_head / n_kv_head query heads; rotary positions turn q and k;
    a window hides keys older than attn_window tokens; with kv_share > 1 only the first layer of
    a group projects k and v (c_attn), the others project q alone (c_q) and reuse the group's;
    attention='linear' replaces the softmax by running sums (smallgpt/linear_attention.py).
    Keys and values kept from earlier steps (a KV cache while decoding, an XL memory while
    training) do their own bookkeeping in smallgpt/kvcache.py; attention asks them what to read.
    """

    fast_cpu = True  # False = torch's fused kernel on CPUs too (nanoGPT's path)

    def __init__(self, config, layer=0):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.n_embd = config.n_embd
        self.head_dim = config.n_embd // config.n_head
        self.dropout = config.dropout
        self.attn_window = config.layer_window(layer)  # this layer's window, 0 = full causal
        self.linear = config.attention == "linear"
        self.owns_kv = layer % config.kv_share == 0
        self.kv_slot = layer // config.kv_share  # which K/V set (of a KVCache too) this layer uses
        # GPT-2's layout, for which attend_gpt2_layout is written
        self.gpt2_layout = (self.n_kv_head == self.n_head and config.pos_emb != "rope"
                            and self.attn_window == 0 and config.kv_share == 1 and not self.linear)
        if self.owns_kv:  # q, k, v at once: n_embd + 2 * n_kv_head * head_dim outputs
            kv_dim = self.n_kv_head * self.head_dim
            self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * kv_dim, bias=config.bias)
        else:
            self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = Dropout(config.dropout)
        self.resid_dropout = Dropout(config.dropout)
        # fused kernel (flash / memory-efficient) when torch has it; tests flip this to compare
        self.flash = hasattr(F, "scaled_dot_product_attention")

    def forward(self, x, cache=None, rope=None, shared_kv=None, band=0, memory=None):
        """x (B, T, C) -> (y (B, T, C), (k, v)): the keys and values this layer attended to,
        (B, n_kv_head, S, hd), which the next layers of its kv_share group get as `shared_kv`.
        `rope` is (cos, sin) from rope_angles; band > 0 narrows what a query sees to its last
        `band` tokens (smallgpt/generate.py's reference). `cache` (decoding: a KVCache) holds
        earlier tokens' keys and values; `memory` (training: an XLMemory) the last segment's."""
        T = x.size(1)  # x (B, T, C)
        qkv = self.c_attn(x) if self.owns_kv else self.c_q(x)  # (B, T, C + 2 * n_kv_head * hd)
        dropout_p = self.dropout if self.training else 0.0
        if self.linear:  # no softmax, no window: running sums over all earlier tokens
            return self.attend_linear(qkv, cache, band), None
        if memory is not None:  # TransformerXL: the memory's keys come before this segment's
            return self.attend_after_memory(qkv, memory, rope, shared_kv, dropout_p)
        # On a CPU, torch's fused kernel has no dropout (it falls back to an fp32 math path) and
        # its bf16 backward is slow (4.5x its fp32 one at the DI725 course's CPU shape, torch
        # 2.13), so those cases take batched matmuls, which measured faster in both.
        fused = self.flash and not (self.fast_cpu and x.device.type == "cpu"
                                    and (dropout_p > 0 or qkv.dtype == torch.bfloat16))
        if cache is None and not fused and self.gpt2_layout and not 0 < band < T:
            return self.attend_gpt2_layout(qkv), None
        q, k, v = self.split_heads(qkv, rope)  # q (B, nh, T, hd); k, v (B, n_kv_head, T, hd)
        if not self.owns_kv:
            k, v = shared_kv  # from the group's first layer (which wrote them to the cache)
        if cache is None:  # the keys are the queries' own: causal, within the window and band
            window = min(self.attn_window or band, band or self.attn_window)
            mask = causal_mask(0, T, window, x.device) if 0 < window < T else None
        else:  # the cache adds the earlier tokens' keys and says which each query may see
            k, v, mask = cache.update(self.kv_slot, q, k, v, self.attn_window, write=self.owns_kv)
        y = self.attend(q, k, v, mask, dropout_p, fused)  # (B, nh, T, hd)
        return self.project(y), (k, v)

    def split_heads(self, qkv, rope):
        """q (B, nh, T, hd) and, for a layer with c_attn, k and v (B, n_kv_head, T, hd), from
        the projection's output (B, T, C [+ 2 * n_kv_head * hd]); rotary positions applied."""
        B, T, _ = qkv.size()
        C, nh, nkv, hd = self.n_embd, self.n_head, self.n_kv_head, self.head_dim
        k = v = None
        if self.owns_kv:
            qk, v = qkv.split([C + nkv * hd, nkv * hd], dim=2)
            qk = qk.view(B, T, nh + nkv, hd)  # q and k heads side by side: one rotary pass
            v = v.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        else:
            qk = qkv.view(B, T, nh, hd)
        if rope is not None:
            qk = apply_rope(qk, *rope)
        if self.owns_kv:
            qk, k = qk.split([nh, nkv], dim=2)
            k = k.transpose(1, 2)  # (B, nkv, T, hd)
        return qk.transpose(1, 2), k, v  # q (B, nh, T, hd)

    def attend(self, q, k, v, mask, dropout_p, fused):
        """Each query's mix of the values: q (B, nh, T, hd) over k, v (B, n_kv_head, S, hd) ->
        (B, nh, T, hd). mask (T, S) or (B, 1 or nh, T, S), True = may attend; None = causal,
        the keys being the queries' own (or all seen by one query). fused: torch's kernel."""
        B, nh, T, hd = q.shape
        is_causal = mask is None and T > 1
        if fused and SDPA_GQA and k.size(1) != nh:  # the kernel reads each kv head per group
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                  is_causal=is_causal, enable_gqa=True)
        k, v = repeat_kv(k, nh), repeat_kv(v, nh)  # (B, nh, S, hd)
        if fused:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                  is_causal=is_causal)
        S = k.size(2)
        bias = causal_bias(T, q.dtype, q.device) if is_causal else None  # (T, T), made once
        if mask is not None:  # 0 where a query may attend, -inf where not
            bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill_(~mask, float("-inf"))
            if bias.dim() == 4:
                bias = bias.expand(B, nh, T, S).reshape(B * nh, T, S)
        y = self.attend_batched(q.reshape(B * nh, T, hd), k.reshape(B * nh, S, hd),
                                v.reshape(B * nh, S, hd), bias)
        return y.view(B, nh, T, hd)

    def attend_batched(self, q, k, v, bias):
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

    def project(self, y):
        """y (B, nh, T, hd) -> the layer's output (B, T, C): heads side by side, then c_proj."""
        B, _, T, _ = y.shape
        y = y.transpose(1, 2).reshape(B, T, self.n_embd)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    # ------------------------------------------ other paths: a CPU's GPT-2, linear, XL memory

    def attend_gpt2_layout(self, qkv):
        """GPT-2's attention without a cache, by batched matmuls (a CPU with dropout or bf16):
        one copy lays out every head's q, k and v contiguously, as the matmuls read them."""
        B, T, _ = qkv.size()
        nh, hd = self.n_head, self.head_dim
        q, k, v = qkv.view(B, T, 3, nh, hd).permute(2, 0, 3, 1, 4).reshape(3, B * nh, T, hd).unbind(0)
        y = self.attend_batched(q, k, v, causal_bias(T, q.dtype, q.device))  # (B * nh, T, hd)
        return self.project(y.view(B, nh, T, hd))

    def attend_linear(self, qkv, state, band):
        """Linear attention (smallgpt/linear_attention.py) of the whole input, or continuing the
        running sums a LinearState (smallgpt/kvcache.py) holds; it has no band: every token sees
        all before it."""
        assert band == 0, f"linear attention sees every earlier token, got band={band}"
        q, k, v = self.split_heads(qkv, None)
        k, v = repeat_kv(k, self.n_head), repeat_kv(v, self.n_head)  # (B, nh, T, hd)
        q, k = feature_map(q), feature_map(k)
        if state is None:
            y = causal_linear_attention(q, k, v)[0]  # (B, nh, T, hd)
        else:
            y = state.attend(self.kv_slot, q, k, v)
        return self.project(y)

    def attend_after_memory(self, qkv, memory, rope, shared_kv, dropout_p):
        """TransformerXL: attention over an XLMemory's M keys and the T new ones. The memory
        keeps keys before the rotary turn; they are turned here at 0..M+T-1 and the queries at
        M..M+T-1 (`rope` covers those M+T positions): rotary scores depend only on the
        distance, so where the frame starts does not matter. Returns the output and the
        un-turned (k, v) for the group's next layers."""
        T = qkv.size(1)
        q, k, v = self.split_heads(qkv, None)  # q (B, nh, T, hd); k, v not turned
        k, v = memory.update(self.kv_slot, k, v) if self.owns_kv else shared_kv  # (B, nkv, S, hd)
        S, turned_k = k.size(2), k
        if rope is not None:
            cos, sin = rope  # (S, 1, hd)
            q = apply_rope(q.transpose(1, 2), cos[S - T:], sin[S - T:]).transpose(1, 2)
            turned_k = apply_rope(k.transpose(1, 2), cos, sin).transpose(1, 2)
        mask = causal_mask(S - T, S, self.attn_window, q.device)  # (T, S): memory, then causal
        # torch's kernel on every device, with the heads repeated beforehand, as XL training has
        # always run (enable_gqa's backward sums the groups in another order: other low bits)
        turned_k, v_all = repeat_kv(turned_k, self.n_head), repeat_kv(v, self.n_head)
        y = self.attend(q, turned_k, v_all, mask, dropout_p, fused=True)  # (B, nh, T, hd)
        return self.project(y), (k, v)


# scaled_dot_product_attention reads grouped K/V heads itself from torch 2.5 (enable_gqa)
SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def repeat_kv(x, n_head):
    """(B, n_kv_head, S, hd) -> (B, n_head, S, hd): kv head g serves query heads
    g * group .. (g + 1) * group - 1, group = n_head / n_kv_head (a view when group is 1)."""
    B, nkv, S, hd = x.shape
    if nkv == n_head:
        return x
    return x[:, :, None].expand(B, nkv, n_head // nkv, S, hd).reshape(B, n_head, S, hd)


def rope_angles(pos, head_dim, theta):
    """The rotary angles pos * theta^(-2i/head_dim), i < head_dim/2, as apply_rope takes them:
    cos and a signed sin, each (T, 1, hd) for pos (T,) or (B, T, 1, hd) for pos (B, T), so they
    broadcast over (B, T, heads, hd). Angle i serves dims i and i + hd/2; the sin's first half
    is negated (see apply_rope)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    angles = pos.float()[..., None] * inv_freq  # (T, hd/2) or (B, T, hd/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], -1).unsqueeze(-2), torch.cat([-sin, sin], -1).unsqueeze(-2)


def apply_rope(x, cos, sin):
    """Rotate each pair (x[i], x[i + hd/2]) of x (B, T, heads, hd) by its angle:
    (x[i] cos - x[i + hd/2] sin, x[i + hd/2] cos + x[i] sin), which is x * cos plus the halves
    swapped times the signed sin, one fused multiply-add. Pairs are the two halves, not
    neighbours (Hugging Face Llama/Starcoder2's layout), so an export needs no reordering."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, T, heads, hd/2) each
    if cos.dtype != x.dtype:  # bf16/fp16 autocast
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.addcmul(x * cos, torch.cat([x2, x1], dim=-1), sin)


def causal_mask(q_start, S, window, device):
    """(S - q_start, S) boolean mask, True = may attend, for queries at slots q_start..S-1 over
    keys 0..S-1: query i sees key j when i - window < j <= i (window 0 = no lower limit)."""
    q_pos = torch.arange(q_start, S, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=device)[None, :]           # (1, S)
    mask = k_pos <= q_pos                                     # (T, S)
    if window > 0:
        mask = mask & (k_pos > q_pos - window)
    return mask


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

    def __init__(self, config, layer=0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, rope=None, shared_kv=None, band=0, memory=None):
        """x (B, T, C) -> (x, kv): kv is what the attention attended to (see its forward)."""
        a, kv = self.attn(self.ln_1(x), cache, rope, shared_kv, band, memory)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, kv


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.pos_emb == "learned":  # rope and none have no position table
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(dict(
            **modules,
            drop=Dropout(config.dropout),
            h=nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)]),
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
        if non_embedding and "wpe" in self.transformer:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def forward(self, idx, targets=None, cache=None, all_logits=False, band=0, memory=None):
        """
        idx (B, T) token ids. With targets (B, T): logits for every position and the mean
        cross-entropy (targets == -1 are ignored). Without: logits of the last position only,
        (B, 1, V), unless all_logits. With a KVCache (smallgpt/kvcache.py) the tokens continue
        what it holds. band > 0: every layer sees at most the last `band` tokens (and its own
        window); with rope/none positions such a forward may be longer than block_size. With an
        XLMemory (TransformerXL, rope/none only) every layer also attends to the keys and values
        it holds, which come right before idx, and the memory then moves on to include idx.
        """
        B, T = idx.size()
        cfg = self.config
        if memory is not None and (cfg.pos_emb == "learned" or cfg.attention == "linear"
                                   or cache is not None):
            raise ValueError("an XL memory needs pos_emb='rope' or 'none' (positions relative to "
                             "the segment) and softmax attention, and no KV cache")
        top = (cache.length if cache is not None else 0) + T
        bounded = cfg.pos_emb != "learned" and (cache is not None or 0 < band <= cfg.block_size
                                                or cfg.attention == "linear")
        if not bounded and (cache is None or cache.pad is None):  # a pad slot has no position
            assert top <= cfg.block_size, \
                f"sequence of {top} tokens is longer than block_size {cfg.block_size}"
        x = self.transformer.wte(idx)  # (B, T, C)
        if cfg.pos_emb == "learned":
            pos = torch.arange(T, device=idx.device) if cache is None else cache.positions(T, idx.device)
            x = x + self.transformer.wpe(pos)  # (T, C) or (B, T, C) added
        rope = None
        if cfg.pos_emb == "rope":
            angles = partial(rope_angles, head_dim=cfg.n_embd // cfg.n_head, theta=cfg.rope_theta)
            if cache is not None:  # the cache knows each row's positions (and keeps a table)
                rope = cache.rope(T, idx.device, angles)
            else:
                n_pos = T + (memory.length if memory is not None else 0)  # memory keys come first
                rope = angles(torch.arange(n_pos, device=idx.device))
        x = self.transformer.drop(x)
        kv = None  # the current kv_share group's keys and values, handed from layer to layer
        for block in self.transformer.h:
            x, kv = block(x, cache, rope, kv, band, memory)
        if cache is not None:
            cache.advance(T)
        if memory is not None:
            memory.advance(T)
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
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])
            self.transformer.wpe.num_embeddings = block_size

    def extend_block_size(self, block_size, generator=None):
        """Grow the context (resume or finetune at a longer block_size). Rotary or no positions
        need nothing; a learned table gets new rows, each the mean of the learned rows plus
        noise of the init's size (std 0.02). Copies of the last row would make every new
        position identical, so the model could not tell them apart until training pulled them
        apart; the mean is a typical position the layers already read sensibly, and the noise
        breaks the tie. `generator` makes the noise the same on every DDP rank."""
        old = self.config.block_size
        assert block_size >= old, f"can only grow block_size: {block_size} < {old}"
        self.config.block_size = block_size
        if "wpe" not in self.transformer:
            return
        w = self.transformer.wpe.weight.detach()  # (old, C)
        noise = torch.randn(block_size - old, w.size(1), generator=generator).to(w)
        new_rows = w.mean(dim=0, keepdim=True) + 0.02 * noise  # (block_size - old, C)
        self.transformer.wpe.weight = nn.Parameter(torch.cat([w, new_rows]))
        self.transformer.wpe.num_embeddings = block_size

    @classmethod
    def from_checkpoint(cls, ckpt, dropout=None, path="the checkpoint"):
        """The GPT a checkpoint dict (smallgpt.checkpoint.load_checkpoint) describes, with its
        weights loaded (strict). A mismatch is a one-line CheckpointError."""
        try:
            args = dict(ckpt["model_args"])
            if dropout is not None:
                args["dropout"] = dropout
            config = GPTConfig(**args)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: model_args not understood by this model.py ({e})") from None
        model = cls(config)
        try:
            model.load_state_dict(clean_state_dict(ckpt["model"]))
        except (RuntimeError, TypeError, AttributeError) as e:
            first = str(e).strip().splitlines()
            detail = " ".join(line.strip() for line in first[:2])[:200]
            raise CheckpointError(f"{path}: the weights don't match its model_args ({detail})") from None
        return model

    @classmethod
    def from_pretrained(cls, model_type, override_args=None):
        """GPT-2 weights ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl' or a local Hugging Face
        GPT-2 directory) via transformers. Only dropout may be overridden."""
        override_args = override_args or {}
        unknown = set(override_args) - {"dropout"}
        if unknown:
            raise ValueError(f"from_pretrained can only override dropout, not {sorted(unknown)}")
        config_args, state = load_hf(model_type)
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

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, **kwargs):
        """
        Append max_new_tokens sampled tokens to idx (B, T) and return (B, T + max_new_tokens).
        temperature 0 is greedy. Other keyword arguments go to generate_stream.
        """
        new = list(self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, **kwargs))
        if not new:
            return idx
        return torch.cat([idx, torch.stack(new, dim=1).to(idx.device)], dim=1)

    def generate_stream(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                        **settings):
        """
        Yield the next token of every row, (B,) int64, max_new_tokens times. prompts: a (B, T)
        tensor or a list of B token lists (ragged ones are left-padded). The other settings
        (generator, use_cache, context_window, window_chunk, kv_cache_dtype, kv_budget, kv_sink),
        their defaults and the decode loop: smallgpt/generate.py's generate_stream.
        """
        return generate.generate_stream(self, prompts, max_new_tokens, temperature, top_k, top_p,
                                        **settings)


def set_fast_cpu(model, enabled):
    """Turn the CPU speed-ups (smallgpt/fast_cpu.py's Dropout, attention's batched matmuls) on
    or off for one model; off is torch's own kernels, as nanoGPT runs on a CPU."""
    for module in model.modules():
        if isinstance(module, (Dropout, CausalSelfAttention)):
            module.fast_cpu = enabled
