"""
How tokens are produced from a GPT: the KV cache and the decode loop. model.py says what is
computed; this file says how a sequence grows one token at a time (GPT.generate and
GPT.generate_stream call generate_stream below; sample.py and interactive.py go through them).

What it holds:
- KVCache: per set of keys/values (one per kv_share group of layers), a ring buffer of at most
  the tokens its layers may see, so a windowed layer's memory stays at its window however long
  the sequence grows.
- LinearState: what a linear-attention model keeps instead (a fixed-size state per layer).
- generate_stream: prefill the prompt, then one token per step. Learned positions crop the
  context to the last `context_window` tokens exactly like nanoGPT; rope/none models never
  re-read the context: every layer keeps attending to its last `context_window` (or window)
  tokens, which equals a full forward with that band at every layer (GPT.forward's `band`).
- filter_logits / sample_next: temperature, top-k, top-p.

- TextSample / decode_samples: the text side of a sample (incremental decoding, stop strings,
  stop tokens), shared by sample.py and workbench.py so both cut a sample at the same place.

What it is not: printing (sample.py) or a prompt loop (interactive.py).
"""

import torch
from torch.nn import functional as F


class KVCache:
    """
    Keys and values of a batch being decoded, written in place (no concatenation per step).

    One ring buffer per K/V set, (B, n_kv_head, capacity, head_dim): set s holds the keys of the
    last `capacities[s]` positions, the token at absolute slot p in ring slot p % capacity. Keys
    are stored after the rotary turn, so each keeps the rotation of its own position. `length`
    counts the slots written so far (the same for every row). Rows with shorter prompts are
    left-padded: `pad[b]` pad slots lead row b; they are masked out and skipped by positions.
    `context` is the furthest back a full layer looks (block_size or sample.py's context_window).
    """

    def __init__(self, capacities, batch_size, n_kv_head, head_dim, context=None):
        self.capacities = list(capacities)
        self.shape = (batch_size, n_kv_head, head_dim)
        self.context = context or max(self.capacities)
        n_sets = len(self.capacities)
        self.k, self.v = [None] * n_sets, [None] * n_sets  # allocated on first write
        # where the keys the last write(slot) returned sit: None = slots 0..S-1 in order, an int
        # m = a full ring after m writes (built only if a mask needs it), else a (S,) tensor
        self.key_pos = [None] * n_sets
        self.reset()

    @classmethod
    def for_model(cls, config, batch_size, context):
        """A cache for `config`'s layers where full layers see `context` tokens: each K/V set
        gets the widest view among the layers that read it."""
        capacities = []
        for group in range(config.kv_groups):
            layers = range(group * config.kv_share, min((group + 1) * config.kv_share, config.n_layer))
            capacities.append(max(min(config.layer_window(i) or context, context) for i in layers))
        return cls(capacities, batch_size, config.kv_heads, config.n_embd // config.n_head, context)

    def reset(self, pad=None):
        """Empty the cache; `pad` is a (B,) int64 tensor of left-padding per row, or None."""
        self.length = 0
        self.pad = pad if pad is not None and bool(pad.any()) else None
        self.max_pad = int(self.pad.max()) if self.pad is not None else 0

    def nbytes(self):
        """Bytes the buffers hold now (keys and values of every set)."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)

    def positions(self, T, device):
        """Position ids for the next T tokens: (T,) or, with padding, (B, T)."""
        pos = torch.arange(self.length, self.length + T, device=device)
        if self.pad is not None:
            pos = (pos[None, :] - self.pad[:, None]).clamp(min=0)
        return pos

    def write(self, slot, k, v):
        """Store k, v (B, n_kv_head, T, hd) of the next T positions in set `slot`; return the
        keys and values the new queries may look at, (B, n_kv_head, S, hd). Their slots are in
        key_pos[slot] (None: simply 0..S-1) for attn_mask."""
        n, T, cap = self.length, k.size(2), self.capacities[slot]
        if self.k[slot] is None or self.k[slot].dtype != k.dtype:
            B, nkv, hd = self.shape
            self.k[slot] = torch.zeros(B, nkv, cap, hd, dtype=k.dtype, device=k.device)
            self.v[slot] = torch.zeros(B, nkv, cap, hd, dtype=v.dtype, device=v.device)
        kbuf, vbuf = self.k[slot], self.v[slot]
        if n + T <= cap:  # not wrapped yet: slots in order, nothing to hide
            kbuf[:, :, n:n + T] = k
            vbuf[:, :, n:n + T] = v
            self.key_pos[slot] = None
            return kbuf[:, :, :n + T], vbuf[:, :, :n + T]
        if T == 1:  # a decode step in a full ring: overwrite the oldest slot
            kbuf[:, :, n % cap] = k[:, :, 0]
            vbuf[:, :, n % cap] = v[:, :, 0]
            self.key_pos[slot] = n + 1
            return kbuf, vbuf
        # several tokens that do not fit: they attend to what is stored and to each other, then
        # only the newest `cap` of them are kept
        new_pos = torch.arange(n, n + T, device=k.device)
        if n == 0:
            keys, values, key_pos = k, v, None
        else:
            stored = min(n, cap)
            keys = torch.cat([kbuf[:, :, :stored], k], dim=2)
            values = torch.cat([vbuf[:, :, :stored], v], dim=2)
            key_pos = torch.cat([self._ring_slots(n, cap, k.device)[:stored], new_pos])
        keep = min(T, cap)
        ring = new_pos[-keep:] % cap
        kbuf[:, :, ring] = k[:, :, -keep:]
        vbuf[:, :, ring] = v[:, :, -keep:]
        self.key_pos[slot] = key_pos
        return keys, values

    @staticmethod
    def _ring_slots(n, cap, device):
        """Which absolute slot each ring position holds after n writes (n >= cap): the latest
        p < n with p % cap == i."""
        i = torch.arange(cap, device=device)
        return (n - 1) - ((n - 1 - i) % cap)

    def attn_mask(self, T, device, window, slot):
        """Boolean mask (True = may attend) for T new queries over the keys write(slot) returned,
        or None when plain causal attention is right. A query sees the keys of the last
        min(window or context, context) slots, itself included, that are not padding."""
        n = self.length
        band = min(window or self.context, self.context)
        key_pos, cap = self.key_pos[slot], self.capacities[slot]
        S = n + T if key_pos is None else cap if isinstance(key_pos, int) else key_pos.numel()
        oldest = n + T - S  # keys are always the slots oldest .. n+T-1, in some order
        if T == 1 and S <= band and self.max_pad <= oldest:
            return None  # one query that sees every key
        if n == 0 and key_pos is None and self.pad is None and T <= band:
            return None  # a fresh prefill inside the band: plain causal
        if key_pos is None:
            key_pos = torch.arange(S, device=device)
        elif isinstance(key_pos, int):
            key_pos = self._ring_slots(key_pos, cap, device)
        q_pos = torch.arange(n, n + T, device=device)[:, None]    # (T, 1)
        k_pos = key_pos[None, :]                                  # (1, S)
        mask = (k_pos <= q_pos) & (k_pos > q_pos - band)          # (T, S)
        if self.pad is not None:
            real_key = k_pos[None] >= self.pad[:, None, None]     # (B, 1, S)
            # a pad query may see itself, so no row of the softmax is empty (its output is unused)
            mask = mask[None] & (real_key | (k_pos == q_pos)[None])  # (B, T, S)
            mask = mask[:, None]                                  # (B, 1, T, S)
        return mask

    def advance(self, T):
        self.length += T


class LinearState:
    """
    What a linear-attention model (GPTConfig.attention='linear') keeps instead of a KV cache:
    per layer the running sum S = sum phi(k) v^T (B, n_head, hd, hd) and the normaliser
    z = sum phi(k) (B, n_head, hd) of linear_attention.py. Its size never changes, so memory and
    time per token stay constant and there is no length limit (with pos_emb='none'). Left-padded
    rows: the keys and values of pad slots are zeroed, so they add nothing to the state.
    Same interface as KVCache where GPT.forward uses it (length, pad, positions, advance).
    """

    def __init__(self, n_layer, batch_size, n_head, head_dim):
        self.shape = (n_layer, batch_size, n_head, head_dim)
        self.reset()

    @classmethod
    def for_model(cls, config, batch_size):
        return cls(config.n_layer, batch_size, config.n_head, config.n_embd // config.n_head)

    def reset(self, pad=None):
        L, B, H, d = self.shape
        self.S, self.z = [None] * L, [None] * L  # allocated on the first attend of each layer
        self.length = 0
        self.pad = pad if pad is not None and bool(pad.any()) else None

    def nbytes(self):
        """Bytes of the state: fixed by the model and the batch, not by the sequence length."""
        L, B, H, d = self.shape
        return L * B * H * (d * d + d) * 4  # fp32, allocated or not yet

    positions = KVCache.positions  # the same length and pad, the same position ids

    def attend(self, layer, q, k, v):
        """q, k (B, H, T, hd) through the feature map, v (B, H, T, hd) of the next T tokens ->
        their outputs (B, H, T, hd), the layer's state moved past them."""
        from linear_attention import causal_linear_attention, linear_attention_step
        T = q.size(2)
        if self.pad is not None and self.length < int(self.pad.max()):  # pad slots: no keys
            slot = torch.arange(self.length, self.length + T, device=k.device)
            real = (slot[None, :] >= self.pad[:, None])[:, None, :, None]  # (B, 1, T, 1)
            k, v = k * real, v * real
        if T == 1 and self.S[layer] is not None:  # a decode step: the recurrent form
            return linear_attention_step(q, k, v, self.S[layer], self.z[layer])
        state = None if self.S[layer] is None else (self.S[layer], self.z[layer])
        y, (self.S[layer], self.z[layer]) = causal_linear_attention(q, k, v, state=state)
        return y

    def advance(self, T):
        self.length += T


@torch.inference_mode()  # cheaper than no_grad: no version counters on decode tensors
def generate_stream(model, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                    generator=None, use_cache=True, context_window=None, window_chunk=1):
    """
    Yield the next token of every row, (B,) int64, max_new_tokens times. See
    GPT.generate_stream for the arguments.
    """
    cfg = model.config
    window = min(context_window or cfg.block_size, cfg.block_size)
    if window < 1:
        raise ValueError(f"context_window must be >= 1, got {context_window}")
    if not 1 <= window_chunk <= window:
        raise ValueError(f"window_chunk must be in [1, {window}], got {window_chunk}")
    device = model.lm_head.weight.device
    seqs = [list(map(int, row)) for row in (prompts.tolist() if torch.is_tensor(prompts)
                                            else prompts)]
    if any(len(s) == 0 for s in seqs):
        raise ValueError("every prompt needs at least one token")
    crop = cfg.pos_emb == "learned"  # a position table: the context must start again at 0
    cache = KVCache.for_model(cfg, len(seqs), window) if use_cache else None
    if cfg.attention == "linear":  # a fixed-size state, no window: every token sees all before
        cache = LinearState.for_model(cfg, len(seqs)) if use_cache else None
    for _ in range(max_new_tokens):
        if not use_cache:
            logits = _reference_logits(model, seqs, window, crop)
        elif cache.length == 0 or (crop and cache.length >= window):
            keep = window if cache.length == 0 or window_chunk == 1 else window - window_chunk + 1
            # rope/none: the whole prompt is prefilled (banded), nothing is ever cropped
            idx, pad = _left_pad([s[-keep:] if crop else s for s in seqs], device)
            cache.reset(pad)
            logits, _ = model(idx, cache=cache)
        else:
            last = torch.tensor([[s[-1]] for s in seqs], dtype=torch.long, device=device)
            logits, _ = model(last, cache=cache)
        nxt = sample_next(logits[:, -1, :].float(), temperature, top_k, top_p, generator)
        for s, t in zip(seqs, nxt.tolist()):
            s.append(t)
        yield nxt


def _reference_logits(model, seqs, window, crop):
    """No cache, rows one by one if ragged. Learned positions: nanoGPT's step, a forward over
    the last `window` tokens. rope/none: a forward over the whole sequence where every layer
    sees at most `window` tokens back, which is what the cache computes one token at a time."""
    device = model.lm_head.weight.device
    band = 0 if crop or model.config.attention == "linear" else window

    def run(rows):
        idx = torch.tensor([s[-window:] if crop else s for s in rows], dtype=torch.long,
                           device=device)
        return model(idx, band=band)[0]

    if len({len(s) for s in seqs}) == 1:
        return run(seqs)
    return torch.cat([run([s]) for s in seqs], dim=0)


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


# ----------------------------------------------------------------------------- text samples
class TextSample:
    """The text of one row as it grows: decoded incrementally, cut at a stop string or at one of
    `stop_ids` (e.g. GPT-2's <|endoftext|>, a line dataset's end of line; never part of the text)."""

    def __init__(self, prompt, tokenizer, stop='', stop_ids=()):
        from textdata import StreamDecoder  # here: the decode loop above needs no tokenizer
        self.prompt = prompt
        self.stop = stop
        self.stop_ids = set(stop_ids)
        self.decoder = StreamDecoder(tokenizer)
        self.text = ''
        self.shown = 0  # characters already handed out by ready_text
        self.done = False

    def add(self, token):
        if self.done:
            return
        if token in self.stop_ids:
            self.finish()
            return
        self.text += self.decoder.push([token])
        if self.stop and self.stop in self.text:
            self.text = self.text[:self.text.index(self.stop)]
            self.done = True

    def finish(self):
        if not self.done:
            self.text += self.decoder.flush()
            if self.stop and self.stop in self.text:
                self.text = self.text[:self.text.index(self.stop)]
        self.done = True

    def ready_text(self):
        """New text that can be shown: holds back a tail that might still become the stop string."""
        stop = self.stop
        end = len(self.text) if self.done or not stop else max(len(self.text) - len(stop) + 1, 0)
        new = self.text[self.shown:end]
        self.shown = max(self.shown, end)
        return new


def decode_samples(samples, token_stream):
    """Feed each step of token_stream (one token per row) to `samples` (one TextSample per row),
    yielding after every step, until all are done or the stream ends; then finish them all.
    Close it (contextlib.closing) so an interrupted loop still closes the stream."""
    try:
        for tokens in token_stream:
            for sample, token in zip(samples, tokens.tolist(), strict=True):
                sample.add(token)
            yield
            if all(s.done for s in samples):
                break
    finally:
        token_stream.close()
        for s in samples:
            s.finish()
