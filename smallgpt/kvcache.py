"""
What a model keeps from earlier tokens: while decoding, between steps (generate.py makes it);
while training with xl_memory, between segments (train.py makes it). model.py's attention hands
each its new keys and values and gets back what to attend to; the bookkeeping is all here.

- KVCache: per set of keys/values (one per kv_share group of layers), a ring buffer of at most
  the tokens its layers may see, so a windowed layer's memory stays at its window however long
  the sequence grows. update() stores the new keys and returns the keys, values and mask.
- Int8Store, Fp8Store, Int4Store: compressed storage for those buffers (kv_cache_dtype), read
  back as floats; EvictingKVCache: a cache that keeps chosen tokens instead of the newest ones
  (kv_budget: heavy hitters plus a recent window; kv_sink: the first tokens stay).
- LinearState: what a linear-attention model keeps instead (a fixed-size state per layer).
- XLMemory: TransformerXL's memory, the last xl_memory tokens' keys and values, detached.

What it is not: attention itself (model.py) or the decode loop (generate.py).
"""

import math

import torch

from smallgpt.linear_attention import causal_linear_attention, linear_attention_step

# ----------------------------------------------------------------------------- storage formats
# A store holds one K or V buffer, (B, n_kv_head, slots, hd), and is indexed like that tensor
# along the slot dimension: store[:, :, i] = x quantises x, store[:, :, i] reads floats back.
# KVCache's ring logic is thus the same for every format; 'auto' keeps a plain tensor.
CACHE_DTYPES = ('auto', 'int8', 'fp8', 'int4')


def _slots(key):
    """The slot index of store[:, :, index]: the only way KVCache indexes a buffer."""
    assert len(key) == 3 and key[0] == slice(None) and key[1] == slice(None), key
    return key


class Int8Store:
    """int8 codes, one fp16 scale per token per head: x ~ code * scale, scale = absmax / 127
    (symmetric, so zero is exact and no offset is stored). 8 + 16 / hd bits per number."""

    def __init__(self, shape, dtype, device):
        self.dtype, self.shape = dtype, shape
        self.codes = torch.zeros(shape, dtype=torch.int8, device=device)
        self.scale = torch.zeros(shape[:-1] + (1,), dtype=torch.float16, device=device)

    def __setitem__(self, key, x):
        key = _slots(key)
        absmax = x.abs().amax(dim=-1, keepdim=True).float()
        # fp16 holds the scale; its smallest normal keeps an all-zero vector from dividing by 0
        scale = (absmax / 127).clamp(min=6.2e-5).to(torch.float16)
        self.codes[key] = (x.float() / scale.float()).round().clamp(-127, 127).to(torch.int8)
        self.scale[key] = scale

    def __getitem__(self, key):
        key = _slots(key)
        return (self.codes[key].float() * self.scale[key].float()).to(self.dtype)

    def nbytes(self):
        return self.codes.numel() + self.scale.numel() * 2


class Fp8Store(Int8Store):
    """float8 e4m3 numbers (3 mantissa bits: relative steps of 1/16 to 1/8 at any size) after
    dividing by one fp16 scale per token per head, absmax / 448 (e4m3's largest value)."""

    def __init__(self, shape, dtype, device):
        super().__init__(shape, dtype, device)
        self.codes = torch.zeros(shape, dtype=torch.float8_e4m3fn, device=device)

    def __setitem__(self, key, x):
        key = _slots(key)
        absmax = x.abs().amax(dim=-1, keepdim=True).float()
        scale = (absmax / 448).clamp(min=6.2e-5).to(torch.float16)
        self.codes[key] = (x.float() / scale.float()).clamp(-448, 448).to(torch.float8_e4m3fn)
        self.scale[key] = scale


def random_rotation(n, seed=0):
    """A fixed (n, n) orthogonal matrix: turning keys by it before quantising spreads a few
    large channels over all of them, and q . k is unchanged once they are turned back."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()  # sign fix: a unique, proper draw


class Int4Store:
    """4-bit codes, two per byte, with one fp16 scale per group of `group` numbers of a token's
    head: x ~ code * scale, code in -7..7, scale = absmax / 7. rotate=True (keys) turns each
    vector by random_rotation first: a key's few outlier channels would otherwise set its
    scale and leave the other channels with one or two levels. 4 + 16 / group bits per number."""

    def __init__(self, shape, dtype, device, group=32, rotate=False):
        hd = shape[-1]
        self.group = min(group, hd)
        assert hd % 2 == 0 and hd % self.group == 0, f"head_dim {hd} vs group {self.group}"
        self.dtype, self.shape = dtype, shape
        self.codes = torch.zeros(shape[:-1] + (hd // 2,), dtype=torch.uint8, device=device)
        self.scale = torch.zeros(shape[:-1] + (hd // self.group,), dtype=torch.float16,
                                 device=device)
        self.rotation = random_rotation(hd).to(device) if rotate else None

    def __setitem__(self, key, x):
        key = _slots(key)
        x = x.float()
        if self.rotation is not None:
            x = x @ self.rotation
        groups = x.unflatten(-1, (-1, self.group))                   # (..., hd/group, group)
        scale = (groups.abs().amax(dim=-1, keepdim=True) / 7).clamp(min=6.2e-5).to(torch.float16)
        codes = ((groups / scale.float()).round().clamp(-7, 7) + 8).to(torch.uint8).flatten(-2)
        self.codes[key] = codes[..., 0::2] | (codes[..., 1::2] << 4)  # (..., hd/2) bytes
        self.scale[key] = scale.squeeze(-1)

    def __getitem__(self, key):
        key = _slots(key)
        packed = self.codes[key]
        codes = torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)  # (..., hd)
        groups = (codes.float() - 8).unflatten(-1, (-1, self.group))
        x = (groups * self.scale[key].float()[..., None]).flatten(-2)
        if self.rotation is not None:
            x = x @ self.rotation.T
        return x.to(self.dtype)

    def nbytes(self):
        return self.codes.numel() + self.scale.numel() * 2


def make_store(kv_cache_dtype, shape, dtype, device, keys):
    """An empty K (keys=True) or V buffer of `shape` in format `kv_cache_dtype`."""
    if kv_cache_dtype == 'auto':  # what the model computes in: a plain tensor, as before
        return torch.zeros(shape, dtype=dtype, device=device)
    if kv_cache_dtype == 'int8':
        return Int8Store(shape, dtype, device)
    if kv_cache_dtype == 'fp8':
        return Fp8Store(shape, dtype, device)
    assert kv_cache_dtype == 'int4', kv_cache_dtype
    return Int4Store(shape, dtype, device, rotate=keys)


def store_nbytes(buf):
    if buf is None:
        return 0
    return buf.numel() * buf.element_size() if torch.is_tensor(buf) else buf.nbytes()


def roundtrip(kv_cache_dtype, x, keys):
    """x (B, h, T, hd) as a store of that format would give it back."""
    if kv_cache_dtype == 'auto':
        return x
    store = make_store(kv_cache_dtype, tuple(x.shape), x.dtype, x.device, keys)
    store[:, :, :] = x
    return store[:, :, :]


class KVCache:
    """
    Keys and values of a batch being decoded, written in place (no concatenation per step).

    One ring buffer per K/V set, (B, n_kv_head, capacity, head_dim): set s holds the keys of the
    last `capacities[s]` positions, the token at absolute slot p in ring slot p % capacity. Keys
    are stored after the rotary turn, so each keeps the rotation of its own position. `length`
    counts the slots written so far (the same for every row). Rows with shorter prompts are
    left-padded: `pad[b]` pad slots lead row b; they are masked out and skipped by positions.
    `context_window` is the furthest back a full layer looks (block_size or sample.py's
    context_window). `kv_cache_dtype` is the storage format (make_store); 'auto' keeps what the
    model computes.
    """

    def __init__(self, capacities, batch_size, n_kv_head, head_dim, context_window=None,
                 kv_cache_dtype='auto'):
        self.capacities = list(capacities)
        self.shape = (batch_size, n_kv_head, head_dim)
        self.context_window = context_window or max(self.capacities)
        self.kv_cache_dtype = kv_cache_dtype
        n_sets = len(self.capacities)
        self.k, self.v = [None] * n_sets, [None] * n_sets  # allocated on first write
        # where the keys the last write(slot) returned sit: None = slots 0..S-1 in order, an int
        # m = a full ring after m writes (built only if a mask needs it), else a (S,) tensor
        self.key_pos = [None] * n_sets
        self.rope_table = None  # rotary (cos, sin) of positions 0..n-1, made by the first rope()
        self.reset()

    @staticmethod
    def for_model(config, batch_size, context_window, kv_cache_dtype='auto', kv_budget=0,
                  kv_sink=0):
        """A cache for `config`'s layers where full layers see `context_window` tokens: each K/V
        set gets the widest view among the layers that read it. kv_budget or kv_sink > 0: an
        EvictingKVCache that keeps kv_budget tokens per set and/or the first kv_sink tokens."""
        capacities = []
        for group in range(config.kv_groups):
            layers = range(group * config.kv_share, min((group + 1) * config.kv_share, config.n_layer))
            capacities.append(max(min(config.layer_window(i) or context_window, context_window)
                                  for i in layers))
        shape = (capacities, batch_size, config.kv_heads, config.n_embd // config.n_head,
                 context_window, kv_cache_dtype)
        if kv_budget or kv_sink:
            return EvictingKVCache(*shape, n_head=config.n_head, kv_budget=kv_budget,
                                   kv_sink=kv_sink)
        return KVCache(*shape)

    def reset(self, pad=None):
        """Empty the cache; `pad` is a (B,) int64 tensor of left-padding per row, or None."""
        self.length = 0
        self.pad = pad if pad is not None and bool(pad.any()) else None
        self.max_pad = int(self.pad.max()) if self.pad is not None else 0

    def nbytes(self):
        """Bytes the buffers hold now (keys and values of every set, codes and scales)."""
        return sum(store_nbytes(t) for t in self.k + self.v)

    def _allocate(self, slot, k, slots):
        """Empty K and V stores of `slots` tokens for set `slot`, in k's dtype (autocast's)."""
        B, nkv, hd = self.shape
        self.k[slot] = make_store(self.kv_cache_dtype, (B, nkv, slots, hd), k.dtype, k.device, True)
        self.v[slot] = make_store(self.kv_cache_dtype, (B, nkv, slots, hd), k.dtype, k.device, False)

    def positions(self, T, device):
        """Position ids for the next T tokens: (T,) or, with padding, (B, T)."""
        pos = torch.arange(self.length, self.length + T, device=device)
        if self.pad is not None:
            pos = (pos[None, :] - self.pad[:, None]).clamp(min=0)
        return pos

    def update(self, slot, q, k, v, attn_window, write=True):
        """What T new queries q (B, n_head, T, hd) of a layer reading set `slot` attend to:
        (keys, values, mask), the keys and values (B, n_kv_head, S, hd) being the stored ones
        and the new k, v (B, n_kv_head, T, hd), which are stored first (write=False: the set's
        first layer already did, and k, v are what it got back). mask is attn_mask's."""
        if write:
            k, v = self.write(slot, k, v)
        return k, v, self.attn_mask(q.size(2), q.device, attn_window, slot)

    def rope(self, T, device, angles):
        """Rotary (cos, sin) of the next T positions (per row if padded) from angles(pos),
        model.py's rope_angles, read from a table made once and grown by doubling: a decode step
        costs two slices instead of six kernels."""
        top = self.length + T
        if self.rope_table is None or self.rope_table[0].size(0) < top:
            size = self.rope_table[0].size(0) if self.rope_table else self.context_window
            n = max(top, 2 * size)
            with torch.inference_mode(False):  # a normal tensor, though made while sampling
                self.rope_table = angles(torch.arange(n, device=device))  # (n, 1, hd) each
        cos, sin = self.rope_table
        if self.pad is None:  # every row at the same positions: views of the table
            return cos[self.length:top], sin[self.length:top]
        pos = self.positions(T, device)  # (B, T): each row its own positions
        return cos[pos], sin[pos]        # (B, T, 1, hd)

    def write(self, slot, k, v):
        """Store k, v (B, n_kv_head, T, hd) of the next T positions in set `slot`; return the
        keys and values the new queries may look at, (B, n_kv_head, S, hd). Their slots are in
        key_pos[slot] (None: simply 0..S-1) for attn_mask."""
        n, T, cap = self.length, k.size(2), self.capacities[slot]
        if self.k[slot] is None or self.k[slot].dtype != k.dtype:
            self._allocate(slot, k, cap)
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
            return kbuf[:, :, :cap], vbuf[:, :, :cap]
        # several tokens that do not fit: they attend to what is stored and to each other, then
        # only the newest `cap` of them are kept
        new_pos = torch.arange(n, n + T, device=k.device)
        if n == 0:
            keys = roundtrip(self.kv_cache_dtype, k, True)
            values = roundtrip(self.kv_cache_dtype, v, False)
            key_pos = None
        else:
            stored = min(n, cap)
            # the new tokens as the store will hold them, like the cached ones
            keys = torch.cat([kbuf[:, :, :stored], roundtrip(self.kv_cache_dtype, k, True)], dim=2)
            values = torch.cat([vbuf[:, :, :stored], roundtrip(self.kv_cache_dtype, v, False)], dim=2)
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

    def attn_mask(self, T, device, attn_window, slot):
        """Boolean mask (True = may attend) for T new queries over the keys write(slot) returned,
        or None when plain causal attention is right. A query sees the keys of the last
        min(attn_window or context_window, context_window) slots, itself included, that are
        not padding."""
        n = self.length
        band = min(attn_window or self.context_window, self.context_window)
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


class EvictingKVCache(KVCache):
    """
    A KVCache that chooses which tokens to keep, per row and per K/V head, instead of keeping
    the newest `capacity` ones of a ring.

    - kv_budget > 0 (H2O: Zhang et al. 2023): each set keeps at most kv_budget tokens.
      Attention hands over its probabilities (observe); each token sums what every query of
      every layer of the set gave it. When a token must go, the newest half of the budget
      (less any sinks) stays, the recent window, and of the older tokens those with the largest
      sums stay.
    - kv_sink > 0 (attention sinks: Xiao et al. 2023): in a set that full layers read, the
      first kv_sink tokens stay for good; a full layer then sees them plus its last
      context_window - kv_sink tokens. Windowed layers never saw the first token in training, so their
      view is the plain window.

    Tokens that no future query can see (out of every layer's band) go first. Kept tokens sit
    in position order, each with its slot number in `slot_pos` (B, n_kv_head, slots); keys
    keep the rotation of their own position, as in the ring. With nothing to drop it returns
    the same keys, in the same order, as KVCache.
    """

    def __init__(self, capacities, batch_size, n_kv_head, head_dim, context_window,
                 kv_cache_dtype='auto', n_head=None, kv_budget=0, kv_sink=0):
        super().__init__(capacities, batch_size, n_kv_head, head_dim, context_window, kv_cache_dtype)
        self.kv_budget, self.kv_sink, self.n_head = kv_budget, kv_sink, n_head or n_kv_head
        self.sizes = [min(kv_budget, cap) if kv_budget else cap for cap in self.capacities]
        assert all(size > self.sinks(s) for s, size in enumerate(self.sizes)), \
            f"kv_budget {kv_budget} must exceed kv_sink {kv_sink}"

    def reset(self, pad=None):
        super().reset(pad)
        n_sets = len(self.capacities)
        self.count = [0] * n_sets          # tokens each set holds (the same in every row/head)
        self.slot_pos = [None] * n_sets    # (B, n_kv_head, size) slot of each kept token
        self.score = [None] * n_sets       # (B, n_kv_head, size) attention it has received
        self.pending = [None] * n_sets     # this step's keys, values, slots, scores

    def nbytes(self):
        """The K/V stores plus what eviction keeps per slot: its position and its score."""
        return super().nbytes() + sum(store_nbytes(t) for t in self.slot_pos + self.score)

    def sinks(self, slot):
        """Sink tokens of a set: only a set as wide as the context window has full layers."""
        return self.kv_sink if self.capacities[slot] == self.context_window else 0

    def update(self, slot, q, k, v, attn_window, write=True):
        """KVCache.update; with a kv_budget, the queries' attention is added to the keys'
        scores (observe), which decide what stays when the set is full."""
        k, v, mask = super().update(slot, q, k, v, attn_window, write)
        if self.kv_budget:
            self.observe(slot, q, k, mask)
        return k, v, mask

    def write(self, slot, k, v):
        n, T, held = self.length, k.size(2), self.count[slot]
        B, nkv, _ = self.shape
        if self.k[slot] is None or self.k[slot].dtype != k.dtype:
            self._allocate(slot, k, self.sizes[slot])
        new_pos = torch.arange(n, n + T, device=k.device).expand(B, nkv, T)
        if held + T <= self.sizes[slot]:  # room for all: store, read back (as the ring does)
            self.k[slot][:, :, held:held + T] = k
            self.v[slot][:, :, held:held + T] = v
            keys, values = self.k[slot][:, :, :held + T], self.v[slot][:, :, :held + T]
        else:  # some must go after this step (advance); until then all are seen
            keys = torch.cat([self.k[slot][:, :, :held], roundtrip(self.kv_cache_dtype, k, True)], 2)
            values = torch.cat([self.v[slot][:, :, :held], roundtrip(self.kv_cache_dtype, v, False)], 2)
        key_pos = new_pos if held == 0 else \
            torch.cat([self.slot_pos[slot][..., :held].long(), new_pos], -1)
        score = torch.zeros(key_pos.shape, device=k.device)
        if held:
            score[..., :held] = self.score[slot][..., :held]
        self.pending[slot] = [keys, values, key_pos, score]
        return keys, values

    def attn_mask(self, T, device, attn_window, slot):
        """(B, n_head, T, S) mask over the keys write(slot) returned, or None when every query
        may see every key causally (so the attention is computed exactly as KVCache's)."""
        n, held = self.length, self.count[slot]
        band = min(self.context_window, attn_window or self.context_window)  # as KVCache's
        sink = self.kv_sink if band == self.context_window else 0  # sinks serve full layers only
        if held == 0 and self.pad is None and T <= band:
            return None  # a fresh prefill inside the band: plain causal
        k_pos = self.pending[slot][2][:, :, None, :]                # (B, nkv, 1, S)
        q_pos = torch.arange(n, n + T, device=device)[:, None]      # (T, 1)
        first = self.pad[:, None, None, None] if self.pad is not None else 0
        mask = (k_pos <= q_pos) & ((k_pos > q_pos - (band - sink)) | (k_pos < first + sink))
        if self.pad is not None:  # pad keys hidden; a pad query sees itself (see KVCache)
            mask = mask & ((k_pos >= first) | (k_pos == q_pos))
        if T == 1 and bool(mask.all()):
            return None
        return mask.repeat_interleave(self.n_head // self.shape[1], dim=1)  # (B, nh, T, S)

    def observe(self, slot, q, k, mask):
        """Add the attention probabilities of queries q (B, nh, T, hd) over keys k (B, nkv, S,
        hd) under `mask` to each key's score, summed over the queries and the heads that
        share its K/V head."""
        B, nh, T, hd = q.shape
        nkv, S = k.size(1), k.size(2)
        att = torch.einsum('bgrtd,bgsd->bgrts', q.float().view(B, nkv, nh // nkv, T, hd),
                           k.float()) / math.sqrt(hd)                 # (B, nkv, nh/nkv, T, S)
        if mask is None and T > 1:  # a fresh causal prefill: the keys are the queries
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        if mask is not None:
            att = att.masked_fill(~mask.view(-1, nkv, nh // nkv, T, S) if mask.dim() == 4
                                  else ~mask, float('-inf'))
        self.pending[slot][3] += att.softmax(dim=-1).sum(dim=(2, 3))  # (B, nkv, S)

    def advance(self, T):
        super().advance(T)
        for slot, pending in enumerate(self.pending):
            if pending is not None:
                self._keep(slot, *pending)
        self.pending = [None] * len(self.pending)

    def _keep(self, slot, keys, values, key_pos, score):
        """Store what the next steps need of this step's keys: all of them if they fit, else
        the `size` with the highest priority, in position order."""
        size, S = self.sizes[slot], key_pos.size(-1)
        if S > size:
            nxt, band, sink = self.length, self.capacities[slot], self.sinks(slot)
            first = self.pad[:, None, None] if self.pad is not None else 0
            real = key_pos >= first
            is_sink = real & (key_pos < first + sink)
            alive = real & (key_pos > nxt - (band - sink))  # some later query can still see it
            if self.kv_budget:  # heavy hitters, and the newest half of the budget for sure
                recent = key_pos >= nxt - (size - sink) // 2
                priority = torch.where(recent, torch.inf, score)
            else:  # sinks alone: a ring after the sinks, the newest stay
                priority = key_pos.float()
            priority = torch.where(alive, priority, -torch.inf)
            priority = torch.where(is_sink, torch.inf, priority)
            keep = priority.topk(size, dim=-1).indices.sort(dim=-1).values  # (B, nkv, size)
            rows = keep[..., None].expand(-1, -1, -1, keys.size(-1))
            keys, values = keys.gather(2, rows), values.gather(2, rows)
            key_pos, score = key_pos.gather(-1, keep), score.gather(-1, keep)
            # back into the store: re-quantising a vector read from int8/fp8 codes gives the
            # same codes (int4's rotation: up to float rounding)
            self.k[slot][:, :, :size] = keys
            self.v[slot][:, :, :size] = values
        if self.slot_pos[slot] is None:
            B, nkv, _ = self.shape
            self.slot_pos[slot] = torch.full((B, nkv, size), -1, dtype=torch.int32,
                                             device=key_pos.device)
            self.score[slot] = torch.zeros(B, nkv, size, device=key_pos.device)
        S = key_pos.size(-1)
        self.slot_pos[slot][..., :S] = key_pos
        self.score[slot][..., :S] = score
        self.count[slot] = S


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


class XLMemory:
    """
    TransformerXL's memory for one batch of rows (train.py's xl_memory): per K/V set, the keys
    (before the rotary turn) and values of the last `size` tokens these rows went through,
    detached, so gradients stop at the segment boundary. GPT.forward(idx, memory=m) hands each
    layer's new keys to update() and moves it on; reset() when the rows' text starts over (what
    is held no longer comes before the next segment). size 0 holds nothing, and a forward with
    it is the plain forward.
    """

    def __init__(self, size):
        assert size >= 0, f"memory size {size} must be >= 0"
        self.size = size
        self.reset()

    def reset(self):
        self.k, self.v = {}, {}  # K/V set -> (B, n_kv_head, length, hd)
        self.length = 0

    def update(self, slot, k, v):
        """The keys and values a segment's queries attend to: what set `slot` holds, then this
        segment's k, v (B, n_kv_head, T, hd). The last `size` of them stay for the next one."""
        if slot in self.k:
            k = torch.cat([self.k[slot], k], dim=2)  # (B, n_kv_head, M + T, hd)
            v = torch.cat([self.v[slot], v], dim=2)
        start = k.size(2) - min(self.size, k.size(2))  # not [-size:]: size 0 must keep nothing
        self.k[slot], self.v[slot] = k[:, :, start:].detach(), v[:, :, start:].detach()
        return k, v

    def advance(self, T):
        self.length = min(self.size, self.length + T)

    def state_dict(self):
        """The memory on the CPU, for a checkpoint (exact resume)."""
        return {'size': self.size, 'length': self.length,
                'k': {s: t.cpu() for s, t in self.k.items()}, 'v': {s: t.cpu() for s, t in self.v.items()}}

    def load_state_dict(self, state, device):
        assert state['size'] == self.size, f"memory of {state['size']} tokens, expected {self.size}"
        self.length = state['length']
        self.k = {s: t.to(device) for s, t in state['k'].items()}
        self.v = {s: t.to(device) for s, t in state['v'].items()}
