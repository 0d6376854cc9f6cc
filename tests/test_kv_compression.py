"""
Compressed KV caches (smallgpt/kvcache.py): int8/fp8/int4 storage (kv_cache_dtype), eviction by attention
score (kv_budget) and attention sinks (kv_sink).

    python -m pytest tests/test_kv_compression.py -q

CPU only, offline, about half a minute. The references: the rounding bound of each stored scale,
checked on the cache itself; an uncompressed cache fed the same tokens; a float64 forward written
out by hand (test_attention_variants.naive_logits) whose mask is the band plus the sink columns,
built entry by entry.
"""

import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import smallgpt.kvcache  # noqa: E402
import test_attention_variants as variants  # noqa: E402
from conftest import randomize_weights  # noqa: E402
from smallgpt.kvcache import EvictingKVCache, KVCache  # noqa: E402
from smallgpt.generate import teacher_forced  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

BLOCK = 16
TINY = dict(n_layer=2, n_head=4, n_embd=64, block_size=BLOCK, vocab_size=50, dropout=0.0)


def model_of(std=0.15, seed=0, **overrides):
    """Weights well above GPT-2's init, so attention is peaked and a wrong key or mask moves the
    logits, but not so large that every logit is a near-tie amplifier (std 0.3 makes the
    greedy path chaotic: any rounding flips it)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **overrides})).eval()
    return randomize_weights(model, seed, std)


def tokens(n, seed=1, batch=2):
    return torch.randint(0, TINY["vocab_size"], (batch, n),
                         generator=torch.Generator().manual_seed(seed))


def step_logits(model, ids, **cache_settings):
    """Prefill ids[:, :1], then one token at a time: the (B, L, V) logits of every step, and the
    cache."""
    cache = KVCache.for_model(model.config, ids.size(0), model.config.block_size, **cache_settings)
    out = []
    with torch.no_grad():
        for t in range(ids.size(1)):
            out.append(model(ids[:, t:t + 1], cache=cache)[0][:, -1])
    return torch.stack(out, dim=1), cache


# ----------------------------------------------------------------------------- storage formats

@pytest.mark.parametrize("kv_cache_dtype", ["int8", "int4"])
def test_stored_codes_are_within_half_a_step_of_the_full_cache(kv_cache_dtype):
    """Layer 0's keys and values depend on the tokens alone, so the full cache and a quantised
    one fed the same tokens hold the same vectors there. Each stored number must be within half
    a quantisation step (its scale / 2) of the full cache's, read from the codes and scales in
    the store; int4 keys are compared in the rotated basis they were quantised in. nbytes counts
    the packed codes and fp16 scales."""
    model = model_of(pos_emb="rope", n_kv_head=2)
    ids = tokens(BLOCK)
    _, full = step_logits(model, ids)
    _, small = step_logits(model, ids, kv_cache_dtype=kv_cache_dtype)
    B, nkv, hd = 2, 2, 64 // 4
    for keys, full_buf, store in ((True, full.k[0], small.k[0]), (False, full.v[0], small.v[0])):
        x = full_buf.float()                                     # (B, nkv, 16, hd)
        if kv_cache_dtype == "int8":
            step = store.scale.float()                           # (B, nkv, 16, 1)
            decoded = store.codes.float() * step
        else:
            step = store.scale.float().repeat_interleave(store.group, dim=-1)  # per number
            packed = store.codes
            codes = torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2).float() - 8
            decoded = codes * step
            if keys:
                x = x @ smallgpt.kvcache.random_rotation(hd)
        error = (decoded - x).abs()
        # half a step, plus float32 rounding of the products (and of the rotation)
        assert bool((error <= step / 2 * (1 + 1e-3) + 1e-6).all()), (keys, (error - step / 2).max())
        assert bool((error > 0).any())  # the codes really are coarser than the floats
    slots = BLOCK * B * nkv * 2 * model.config.n_layer  # K and V of every layer, kv_share 1
    per_slot = hd + 2 if kv_cache_dtype == "int8" else hd // 2 + 2 * (hd // 32 or 1)
    assert small.nbytes() == slots * per_slot
    assert full.nbytes() == slots * hd * 4


def test_int4_store_packs_two_codes_per_byte():
    store = smallgpt.kvcache.Int4Store((1, 1, 3, 8), torch.float32, "cpu", group=8)
    x = torch.tensor([[[[7., -7., 0., 1., -1., 3.5, 2., -3.],
                        [0.] * 8,
                        [70., 0., 0., 0., 0., 0., 0., -70.]]]])
    store[:, :, :] = x
    assert store.codes.shape == (1, 1, 3, 4) and store.codes.dtype == torch.uint8
    # scale 1: codes 8 + (7, -7, 0, 1, -1, 4 (3.5 rounds to even: 4), 2, -3), low nibble first
    assert store.codes[0, 0, 0].tolist() == [15 | (1 << 4), 8 | (9 << 4), 7 | (12 << 4), 10 | (5 << 4)]
    torch.testing.assert_close(store[:, :, :][0, 0, 0], torch.tensor([7., -7, 0, 1, -1, 4, 2, -3]))
    assert store[:, :, 1:2].abs().max() == 0  # an all-zero vector is exact
    torch.testing.assert_close(store[:, :, 2:3][0, 0, 0], x[0, 0, 2])


@pytest.mark.parametrize("kv_cache_dtype, max_error, min_agree", [("int8", 0.05, 0.97),
                                                               ("fp8", 0.25, 0.95),
                                                               ("int4", 1.0, 0.85)])
def test_quantised_caches_keep_the_logits_close(kv_cache_dtype, max_error, min_agree):
    """The logits through a quantised cache against the full cache, every step of 3 x block_size
    tokens (the ring wraps), on a random 2-layer model. Stated bounds on the largest logit error,
    in units of the logits' std: each format's relative step on a K/V vector (int8 1/254 of its
    largest entry, fp8 1/16 of each number, int4 1/14 of a group's largest) times the ~6x that
    this model amplifies a K/V error into logits, with a 1.5x margin: int8 0.05, fp8 0.25, int4
    1.0 (it shows 0.03, 0.17, 0.70). The greedy agreement with the full cache is printed
    (pytest -s): int8 99%, fp8 98%, int4 91% here; each must stay above its floor."""
    model = model_of(pos_emb="rope")
    ids = tokens(3 * BLOCK, seed=3)
    full, _ = step_logits(model, ids)
    small, _ = step_logits(model, ids, kv_cache_dtype=kv_cache_dtype)
    relative = ((small - full).abs().max() / full.std()).item()
    agree = (small.argmax(-1) == full.argmax(-1)).float().mean().item()
    print(f"{kv_cache_dtype}: largest logit error {relative:.4f} of the logits' std, "
          f"greedy agreement {agree:.1%}")
    assert 0 < relative < max_error, relative
    assert agree >= min_agree, agree


# ----------------------------------------------------------------------------- kv_budget

VARIANTS = {"learned": {}, "rope_gqa": dict(pos_emb="rope", n_kv_head=2),
            "window_share": dict(pos_emb="rope", attn_window=5, window_pattern="SL", kv_share=2)}


@pytest.mark.parametrize("name", VARIANTS)
def test_a_budget_as_long_as_the_text_is_the_full_cache_exactly(name, recorded_logits):
    """kv_budget >= the tokens ever held evicts nothing: the same greedy tokens and bit-identical
    logits as the full cache (scores are tracked all along, but they only decide what to drop).
    The defaults ('auto', 0, 0) passed explicitly are today's cache, also exactly."""
    model = model_of(**VARIANTS[name])
    prompts = tokens(3, seed=4).tolist()
    runs = {}
    for label, settings in (("plain", {}), ("defaults", dict(kv_cache_dtype="auto", kv_budget=0,
                                                             kv_sink=0)),
                            ("budget", dict(kv_budget=BLOCK)), ("budget+", dict(kv_budget=99))):
        recorded_logits.clear()
        out = list(model.generate_stream(prompts, BLOCK - 3, temperature=0, **settings))
        runs[label] = (torch.stack(out, 1), torch.stack(recorded_logits))
    for label in ("defaults", "budget", "budget+"):
        assert torch.equal(runs[label][0], runs["plain"][0]), label
        assert torch.equal(runs[label][1], runs["plain"][1]), label


def test_eviction_keeps_the_recent_window_and_each_keys_own_rotation():
    """A rope model with kv_budget=6 over 3 x block_size tokens: every step after the budget
    fills, each set holds exactly 6 tokens per row and head, always including the newest 3 (the
    recent half), in position order. Layer 0's keys do not depend on what was evicted, so each
    kept key must equal the uncompressed cache's key of the same position, rotation included."""
    model = model_of(pos_emb="rope", n_kv_head=2)
    ids = tokens(BLOCK, seed=5)
    _, full = step_logits(model, ids)  # inside block_size: slot p holds position p
    cache = KVCache.for_model(model.config, 2, BLOCK, kv_budget=6)
    assert isinstance(cache, EvictingKVCache)
    evicted_somewhere = False
    with torch.no_grad():
        for t in range(ids.size(1)):
            model(ids[:, t:t + 1], cache=cache)
            held = cache.slot_pos[0][..., :cache.count[0]].long()  # (B, nkv, held)
            assert cache.count[0] == min(t + 1, 6)
            assert bool((held.diff(dim=-1) > 0).all())           # position order
            recent = torch.arange(max(0, t - 2), t + 1)
            assert all(set(recent.tolist()) <= set(row) for row in held.flatten(0, 1).tolist())
            evicted_somewhere |= t >= 6 and bool((held[..., 0] > 0).any())
            kept = cache.k[0][:, :, :cache.count[0]]             # (B, nkv, held, hd)
            expected = full.k[0].gather(2, held[..., None].expand_as(kept))
            assert torch.equal(kept, expected)
    assert evicted_somewhere  # some row dropped an old token, not only the newest


def test_eviction_drops_the_least_attended_tokens():
    """One layer, one head, no positions, a budget of 4 (recent window 2), 12 tokens one at a
    time. With one layer the queries and keys do not depend on what was evicted, so H2O can be
    replayed by hand: each step, the new query's softmax over the tokens kept so far is added to
    their scores, then while more than 4 are kept the lowest-scoring one outside the newest 2
    goes. The cache must keep the same tokens at every step."""
    model = model_of(n_layer=1, n_head=1, n_embd=16, pos_emb="none", std=0.3, seed=3)
    ids = tokens(12, seed=7, batch=1)
    dropped_an_older_one = False  # not always the newest candidate: the scores decided
    cache = KVCache.for_model(model.config, 1, BLOCK, kv_budget=4)
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        x = model.transformer.wte(ids)[0]                         # (12, 16): no positions
        q, k, _ = attn.c_attn(model.transformer.h[0].ln_1(x)).split(16, dim=-1)
        kept, score = [], {}
        for t in range(12):
            model(ids[:, t:t + 1], cache=cache)
            kept.append(t)
            probs = (q[t] @ k[kept].T / 4.0).softmax(-1)          # 1/sqrt(head_dim 16)
            for p, prob in zip(kept, probs.tolist()):
                score[p] = score.get(p, 0.0) + prob
            if len(kept) > 4:
                gone = min(kept[:-2], key=score.get)
                dropped_an_older_one |= gone != kept[-3]
                kept.remove(gone)
            assert cache.slot_pos[0][0, 0, :cache.count[0]].tolist() == kept, (t, kept)
    assert dropped_an_older_one


# ----------------------------------------------------------------------------- kv_sink

SINK_VARIANTS = {"rope": dict(pos_emb="rope"), "none": dict(pos_emb="none"),
                 "all": dict(pos_emb="rope", rope_theta=500.0, n_kv_head=2, attn_window=5,
                             window_pattern="SL", kv_share=2)}


@pytest.mark.parametrize("name", SINK_VARIANTS)
def test_sinks_equal_the_band_plus_the_first_columns(name, recorded_logits, monkeypatch):
    """Past block_size with kv_sink=3, a full layer's query i sees keys 0..2 and its last
    block_size - 3 tokens; windowed layers keep their plain window. The reference is
    test_attention_variants' float64 forward with that mask, built entry by entry."""
    sink = 3
    model = variants.randomize(variants.tiny_model(**SINK_VARIANTS[name]))
    prompt = variants.random_batch(2, 5, seed=8).tolist()
    steps = 3 * BLOCK
    out = torch.stack(list(model.generate_stream(prompt, steps, temperature=0, kv_sink=sink)), 1)
    seqs = torch.cat([torch.tensor(prompt), out], dim=1)
    plain_band = variants.band_mask

    def band_and_sinks(T, window):
        mask = plain_band(T, window)
        if window == BLOCK:  # a full layer (a windowed one asks for its own, smaller window)
            mask = plain_band(T, BLOCK - sink)
            for i in range(T):
                for j in range(min(sink, i + 1)):
                    mask[i, j] = True
        return mask

    monkeypatch.setattr(variants, "band_mask", band_and_sinks)
    with torch.no_grad():
        reference = variants.naive_logits(model, seqs[:, :-1], band=BLOCK)  # (2, T, V)
    for step, logits in enumerate(recorded_logits):
        at = 5 + step - 1  # the position whose logits pick token 5 + step
        torch.testing.assert_close(logits.double(), reference[:, at], atol=1e-4, rtol=0)
    assert bool((reference[:, 4:].argmax(-1) == seqs[:, 5:]).all())


def test_sinks_change_nothing_inside_the_context():
    model = model_of(pos_emb="rope")
    ids = tokens(BLOCK, seed=9)
    plain, _ = step_logits(model, ids)
    sunk, _ = step_logits(model, ids, kv_sink=4)
    assert torch.equal(plain, sunk)


# ----------------------------------------------------------------------------- settings and loss

@pytest.mark.parametrize("settings, message", [
    (dict(kv_cache_dtype="int3"), "kv_cache_dtype must be one of auto, int8, fp8, int4, got 'int3'"),
    (dict(kv_sink=2), "kv_sink needs pos_emb 'rope' or 'none'"),
    (dict(kv_budget=-1), "kv_budget and kv_sink must be >= 0"),
    (dict(use_cache=False, kv_cache_dtype="int8"), "set use_cache=True"),
])
def test_bad_cache_settings_are_one_line_errors(settings, message):
    model = model_of()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("'", "'")):
        list(model.generate_stream([[1, 2]], 2, temperature=0, **settings))
    rope = model_of(pos_emb="rope")
    with pytest.raises(ValueError, match="kv_sink=16 must be smaller than the context window"):
        list(rope.generate_stream([[1, 2]], 2, kv_sink=16))
    linear = model_of(pos_emb="none", attention="linear")
    with pytest.raises(ValueError, match="keeps a fixed-size state instead"):
        list(linear.generate_stream([[1, 2]], 2, kv_cache_dtype="int8"))


@pytest.mark.parametrize("variant", [dict(pos_emb="rope", n_kv_head=2),
                                     dict(pos_emb="none", attention="linear")])
def test_teacher_forced_loss_equals_the_full_forward_inside_the_context(variant):
    """teacher_forced feeds a text one token at a time through the cache (linear attention: its
    fixed-size state); inside block_size its summed cross-entropy is the full forward's (the
    cache is exact there)."""
    import torch.nn.functional as F
    model = model_of(**variant)
    ids = tokens(BLOCK, seed=10)
    nll, cache = teacher_forced(model, ids)
    with torch.no_grad():
        logits, _ = model(ids[:, :-1], all_logits=True)
    expected = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1),
                               reduction="sum").item()
    assert nll == pytest.approx(expected, rel=1e-5)
    assert cache.length == BLOCK - 1
