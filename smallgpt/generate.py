"""
How tokens are produced from a GPT: the decode loop. model.py says what is computed; this file
says how a sequence grows one token at a time (GPT.generate and GPT.generate_stream call
generate_stream below; sample.py and interactive.py go through them). What a model keeps between
steps (the KV cache, its compressed formats, linear attention's state) is kvcache.py.

What it holds:
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

from smallgpt.kvcache import CACHE_DTYPES, KVCache, LinearState
from smallgpt.tokenizer import StreamDecoder


def generate_stream(model, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                    generator=None, use_cache=True, context_window=None, window_chunk=1,
                    kv_cache_dtype='auto', kv_budget=0, kv_sink=0):
    """
    An iterator of the next token of every row, (B,) int64, max_new_tokens times (what
    GPT.generate_stream returns). Not a generator itself: a bad setting raises here, at the
    call, before a caller has printed anything.

    prompts: a (B, T) tensor or a list of B token lists (lengths may differ: left-padded).
    Each token is predicted from at most `context_window` (default block_size) tokens back:
    - learned positions crop the context exactly as nanoGPT does. With the cache, once the
      window is full the last `context_window - window_chunk + 1` tokens are prefilled
      again and `window_chunk - 1` cached steps follow. window_chunk=1 (default) is exact
      (a full-window prefill per token past the window: a position table leaves no cheaper
      exact way); larger chunks amortise it, but the context shrinks to
      context_window - window_chunk + 1 right after each re-prefill.
    - rope/none positions never re-read the context: every layer attends to its last
      context_window (or attn_window) tokens, one token of work per step, however long the
      sequence gets; that is forward(whole sequence, band=context_window).
    use_cache=False is the reference: a full forward per token (nanoGPT's loop; rope/none:
    the banded forward over the whole sequence).
    Compressed caches (README: How low can the KV cache go): kv_cache_dtype 'int8', 'fp8'
    or 'int4' stores K/V quantised ('auto': as computed); kv_budget > 0 keeps that many
    tokens per layer (heavy hitters plus a recent window); kv_sink > 0 keeps the first
    tokens when a rope/none model's cache rolls past context_window.
    """
    seqs = [list(map(int, row)) for row in (prompts.tolist() if torch.is_tensor(prompts)
                                            else prompts)]
    if any(len(s) == 0 for s in seqs):
        raise ValueError("every prompt needs at least one token")
    context_window, cache = _setup(model, len(seqs), use_cache, context_window, window_chunk,
                                   kv_cache_dtype, kv_budget, kv_sink)
    return _decode(model, seqs, max_new_tokens, cache, context_window, window_chunk,
                   lambda logits: sample_next(logits.float(), temperature, top_k, top_p,
                                              generator))


@torch.inference_mode()
def teacher_forced(model, ids, context_window=None, window_chunk=1, kv_cache_dtype='auto',
                   kv_budget=0, kv_sink=0):
    """Feed the rows of ids (B, L) one token at a time through a cache set up as for
    generate_stream, as if each had been sampled: returns the summed cross-entropy (nats) of
    predicting ids[:, 1:] and the cache at the end (its nbytes() after L tokens)."""
    B, L = ids.shape
    context_window, cache = _setup(model, B, True, context_window, window_chunk, kv_cache_dtype,
                                   kv_budget, kv_sink)
    targets, nll = ids[:, 1:].to(model.lm_head.weight.device), []

    def forced(logits):
        nll.append(F.cross_entropy(logits.float(), targets[:, len(nll)], reduction='sum'))
        return targets[:, len(nll) - 1]

    for _ in _decode(model, ids[:, :1].tolist(), L - 1, cache, context_window, window_chunk, forced):
        pass
    return torch.stack(nll).sum().item(), cache


def _setup(model, batch_size, use_cache, context_window, window_chunk, kv_cache_dtype,
           kv_budget, kv_sink):
    """Check the settings; return the context window in tokens (context_window, or block_size
    if unset) and a cache (None without one)."""
    cfg = model.config
    context_window = context_window or cfg.block_size
    if cfg.pos_emb == 'learned':  # a position table has block_size rows: no further back
        context_window = min(context_window, cfg.block_size)
    # rope/none may look further back than block_size: a model trained with xl_memory=M saw
    # block_size + M tokens back; any other model then reads at distances it never trained on
    if context_window < 1:
        raise ValueError(f"context_window must be >= 1, got {context_window}")
    if not 1 <= window_chunk <= context_window:
        raise ValueError(f"window_chunk must be in [1, {context_window}], got {window_chunk}")
    if kv_cache_dtype not in CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {', '.join(CACHE_DTYPES)}, "
                         f"got {kv_cache_dtype!r}")
    if kv_budget < 0 or kv_sink < 0:
        raise ValueError(f"kv_budget and kv_sink must be >= 0 (0 = off), got {kv_budget}, {kv_sink}")
    if not use_cache and (kv_cache_dtype != 'auto' or kv_budget or kv_sink):
        raise ValueError("kv_cache_dtype, kv_budget and kv_sink shape the KV cache: "
                         "set use_cache=True")
    if kv_sink and cfg.pos_emb == 'learned':
        raise ValueError("kv_sink needs pos_emb 'rope' or 'none': a learned-position model "
                         "re-reads its last block_size tokens past block_size, with no sinks")
    if kv_sink >= context_window or (kv_budget and kv_sink >= min(kv_budget, context_window)):
        raise ValueError(f"kv_sink={kv_sink} must be smaller than the context window "
                         f"({context_window}) and kv_budget ({kv_budget or 'off'})")
    if not use_cache:
        return context_window, None
    if cfg.attention == 'linear':  # a fixed-size state, no window: every token sees all before
        if kv_cache_dtype != 'auto' or kv_budget or kv_sink:
            raise ValueError("kv_cache_dtype, kv_budget and kv_sink shape a KV cache; a model with "
                             "attention='linear' keeps a fixed-size state instead: leave them unset")
        return context_window, LinearState.for_model(cfg, batch_size)
    return context_window, KVCache.for_model(cfg, batch_size, context_window, kv_cache_dtype,
                                             kv_budget, kv_sink)


@torch.inference_mode()  # cheaper than no_grad: no version counters on decode tensors
def _decode(model, seqs, steps, cache, context_window, window_chunk, pick):
    """The decode loop: `steps` times, the logits of every row's next token, (B, V), go to
    pick, whose (B,) tokens are appended to seqs (lists, grown in place) and yielded."""
    device = model.lm_head.weight.device
    crop = model.config.pos_emb == "learned"  # a position table: the context must start again at 0
    for _ in range(steps):
        if cache is None:
            logits = _reference_logits(model, seqs, context_window, crop)
        elif cache.length == 0 or (crop and cache.length >= context_window):
            keep = context_window if cache.length == 0 or window_chunk == 1 \
                else context_window - window_chunk + 1
            # rope/none: the whole prompt is prefilled (banded), nothing is ever cropped
            idx, pad = _left_pad([s[-keep:] if crop else s for s in seqs], device)
            cache.reset(pad)
            logits, _ = model(idx, cache=cache)
        else:
            last = torch.tensor([[s[-1]] for s in seqs], dtype=torch.long, device=device)
            logits, _ = model(last, cache=cache)
        nxt = pick(logits[:, -1, :])
        for s, t in zip(seqs, nxt.tolist()):
            s.append(t)
        yield nxt


def _reference_logits(model, seqs, context_window, crop):
    """No cache, rows one by one if ragged. Learned positions: nanoGPT's step, a forward over
    the last `context_window` tokens. rope/none: a forward over the whole sequence where every
    layer sees at most `context_window` tokens back, which is what the cache computes one token
    at a time."""
    device = model.lm_head.weight.device
    band = 0 if crop or model.config.attention == "linear" else context_window

    def run(rows):
        idx = torch.tensor([s[-context_window:] if crop else s for s in rows], dtype=torch.long,
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
