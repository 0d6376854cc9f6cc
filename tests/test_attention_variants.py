"""
Tests for the attention variants of GPTConfig (pos_emb/rope_theta, n_kv_head, attn_window/
window_pattern, kv_share) and for training at a longer block_size than a checkpoint's.

    python -m pytest tests/test_attention_variants.py -q

CPU only, offline, about a minute (most of it the train.py/sample.py runs). The references are
written here, independently of model.py: a float64 forward that repeats K/V heads with
repeat_interleave, turns q and k with complex numbers (torch.polar) and builds the window's band
mask with a loop; the KV cache is checked against recomputing the whole context.
"""

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from conftest import randomize_weights, run_script, run_train  # noqa: E402
from smallgpt.kvcache import KVCache  # noqa: E402
from model import GPT, GPTConfig, NANOGPT_MODEL_ARGS, apply_rope, rope_angles  # noqa: E402

TINY = dict(n_layer=4, n_head=4, n_embd=32, block_size=16, vocab_size=50, dropout=0.0)

VARIANTS = {
    "rope": dict(pos_emb="rope"),
    "none": dict(pos_emb="none"),
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "window_SSSL": dict(attn_window=4, window_pattern="SSSL"),
    "kv_share": dict(kv_share=2),
    "all": dict(pos_emb="rope", rope_theta=500.0, n_kv_head=2, attn_window=5, window_pattern="SL",
                kv_share=2),
}


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides})).eval()


randomize = randomize_weights  # weights far from the init: a wrong mask moves the logits


def random_batch(B, T, V=TINY["vocab_size"], seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- a naive reference

def complex_rope(x, pos, theta):
    """Turn x (..., T, hd) by pos * theta^(-2i/hd): pair i is (x[i], x[i + hd/2]) read as one
    complex number, multiplied by a unit complex number (torch.polar)."""
    hd = x.size(-1)
    freqs = 1.0 / theta ** (torch.arange(hd // 2, dtype=torch.float64) * 2 / hd)
    turn = torch.polar(torch.ones(len(pos), hd // 2, dtype=torch.float64),
                       pos.double()[:, None] * freqs[None, :])  # (T, hd/2)
    z = torch.view_as_complex(torch.stack([x[..., :hd // 2], x[..., hd // 2:]], dim=-1).double().contiguous())
    r = torch.view_as_real(z * turn)  # (..., T, hd/2, 2)
    return torch.cat([r[..., 0], r[..., 1]], dim=-1)


def band_mask(T, window):
    """(T, T) bool, built entry by entry: i sees j when i - window < j <= i (0 = no limit)."""
    mask = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(T):
            mask[i, j] = j <= i and (window == 0 or j > i - window)
    return mask


def naive_logits(model, idx, band=0):
    """The variant GPT's forward written out by hand in float64: (B, T, V). band > 0: every
    layer sees at most `band` tokens back (and its own window), at any length."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    C, H = cfg.n_embd, cfg.n_head
    hd, KV = C // H, cfg.n_kv_head or cfg.n_head
    B, T = idx.shape
    pattern = cfg.window_pattern or "S"

    def linear(x, prefix):
        y = x @ sd[prefix + ".weight"].T
        return y + sd[prefix + ".bias"] if prefix + ".bias" in sd else y

    def layernorm(x, prefix):
        return F.layer_norm(x, (C,), sd[prefix + ".weight"], sd.get(prefix + ".bias"), 1e-5)

    x = sd["transformer.wte.weight"][idx]
    if cfg.pos_emb == "learned":
        x = x + sd["transformer.wpe.weight"][:T]
    for layer in range(cfg.n_layer):
        p = f"transformer.h.{layer}"
        h = layernorm(x, p + ".ln_1")
        if layer % cfg.kv_share == 0:  # this layer computes the group's k and v
            q, k, v = linear(h, p + ".attn.c_attn").split([C, KV * hd, KV * hd], dim=-1)
            k = k.view(B, T, KV, hd).transpose(1, 2)
            v = v.view(B, T, KV, hd).transpose(1, 2)
            if cfg.pos_emb == "rope":
                k = complex_rope(k, torch.arange(T), cfg.rope_theta)
            k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
        else:
            q = linear(h, p + ".attn.c_q")
        q = q.view(B, T, H, hd).transpose(1, 2)
        if cfg.pos_emb == "rope":
            q = complex_rope(q, torch.arange(T), cfg.rope_theta)
        window = cfg.attn_window if pattern[layer % len(pattern)] == "S" else 0
        window = min(w for w in (window, band) if w) if window or band else 0
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(~band_mask(T, window), float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + linear(y, p + ".attn.c_proj")
        h = layernorm(x, p + ".ln_2")
        x = x + linear(F.gelu(linear(h, p + ".mlp.c_fc")), p + ".mlp.c_proj")
    x = layernorm(x, "transformer.ln_f")
    return x @ sd["transformer.wte.weight"].T


# ----------------------------------------------------------------------------- model

@pytest.mark.parametrize("name", VARIANTS)
def test_loss_at_init_is_about_log_vocab(name):
    model = tiny_model(**VARIANTS[name])
    _, loss = model(random_batch(8, 16), random_batch(8, 16, seed=2))
    assert abs(loss.item() - math.log(TINY["vocab_size"])) < 0.15, loss.item()


@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("name", [*VARIANTS, "window_longer_than_T"])
def test_logits_match_the_naive_reference(name, flash):
    overrides = VARIANTS.get(name, dict(attn_window=20))
    model = randomize(tiny_model(**overrides))
    for block in model.transformer.h:
        block.attn.flash = flash
    idx = random_batch(2, 16)
    logits, _ = model(idx, all_logits=True)
    ref = naive_logits(model, idx)
    assert ref.abs().max() > 1.0
    torch.testing.assert_close(logits.double(), ref, atol=1e-5, rtol=1e-5)


def test_rope_matches_complex_rotation():
    x = torch.randn(2, 3, 7, 8)  # (B, h, T, hd)
    pos = torch.tensor([0, 1, 2, 5, 9, 100, 1000])

    def ours(positions):  # apply_rope takes (B, T, h, hd)
        return apply_rope(x.transpose(1, 2), *rope_angles(positions, 8, 10000.0)).transpose(1, 2)

    torch.testing.assert_close(ours(pos).double(), complex_rope(x, pos, 10000.0), atol=1e-4, rtol=1e-4)
    # with padded rows the cache hands out (B, T) positions: each row is turned by its own
    ours_rows = ours(torch.stack([pos, pos + 3]))
    torch.testing.assert_close(ours_rows[1].double(), complex_rope(x[1], pos + 3, 10000.0),
                               atol=1e-4, rtol=1e-4)


def test_rope_scores_depend_only_on_relative_position():
    q, k = torch.randn(1, 2, 6, 16, dtype=torch.float64), torch.randn(1, 2, 6, 16, dtype=torch.float64)
    pos = torch.arange(6)

    def scores(shift):
        cos, sin = rope_angles(pos + shift, 16, 10000.0)
        turned_q = apply_rope(q.transpose(1, 2), cos.double(), sin.double()).transpose(1, 2)
        turned_k = apply_rope(k.transpose(1, 2), cos.double(), sin.double()).transpose(1, 2)
        return turned_q @ turned_k.transpose(-1, -2)  # (1, 2, 6, 6)

    torch.testing.assert_close(scores(0), scores(37), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(scores(0), q @ k.transpose(-1, -2), atol=1e-2)  # rope did turn them


DEGENERATE = {  # a setting that must be the plain model exactly, and the plain setting
    "n_kv_head == n_head": (dict(n_kv_head=4), {}),
    "attn_window >= T": (dict(attn_window=16), {}),
    "attn_window much longer": (dict(attn_window=1000), {}),
    "kv_share = 1": (dict(kv_share=1), {}),
    "pattern L": (dict(attn_window=4, window_pattern="L"), {}),
}


@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("case", DEGENERATE)
def test_degenerate_settings_are_the_plain_model(case, flash):
    variant, plain = (randomize(tiny_model(**kw)) for kw in DEGENERATE[case])
    assert {k: v.shape for k, v in variant.state_dict().items()} == \
        {k: v.shape for k, v in plain.state_dict().items()}
    variant.load_state_dict(plain.state_dict())  # the same weights
    for model in (variant, plain):
        for block in model.transformer.h:
            block.attn.flash = flash
    idx = random_batch(2, 16)
    torch.testing.assert_close(variant(idx, all_logits=True)[0], plain(idx, all_logits=True)[0],
                               atol=1e-6, rtol=0)
    prompt = idx[:, :3]
    assert torch.equal(variant.generate(prompt, 10, temperature=0), plain.generate(prompt, 10, temperature=0))


def test_gpt2_shaped_model_keeps_gpt2_parameter_names_and_shapes():
    model = tiny_model()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["transformer.wpe.weight"] == (16, 32)
    assert shapes["transformer.h.0.attn.c_attn.weight"] == (96, 32)  # 3 * n_embd
    assert not any("c_q" in k for k in shapes)
    gqa = tiny_model(n_kv_head=1, kv_share=2, pos_emb="rope").state_dict()
    assert gqa["transformer.h.0.attn.c_attn.weight"].shape == (32 + 2 * 1 * 8, 32)
    assert gqa["transformer.h.1.attn.c_q.weight"].shape == (32, 32)
    assert "transformer.h.1.attn.c_attn.weight" not in gqa and "transformer.wpe.weight" not in gqa


@pytest.mark.parametrize("kw, message", [
    (dict(n_kv_head=3), "n_kv_head=3 must divide n_head=4"),
    (dict(pos_emb="alibi"), "pos_emb must be"),
    (dict(window_pattern="SX", attn_window=4), "window_pattern='SX'"),
    (dict(window_pattern="SL"), "attn_window > 0"),
    (dict(kv_share=0), "kv_share must be"),
])
def test_bad_variant_settings_are_one_line_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY, **kw})


# ----------------------------------------------------------------------------- KV cache

def reference_logits(model, seq):
    return model(torch.tensor([seq]))[0][0, -1]


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_decode_equals_recomputing_the_context(name):
    """Prefill, then one token at a time up to block_size: each step's logits equal a full
    forward over the same context; then greedy and sampled tokens with the cache equal the
    uncached loop for ragged prompts, inside block_size and past it (learned positions crop to
    the last block_size tokens and prefill again; rope/none keep going with a band)."""
    model = randomize(tiny_model(**VARIANTS[name]))
    cfg = model.config
    cache = KVCache.for_model(cfg, 1, 16)
    seq = random_batch(1, 16, seed=3)[0].tolist()
    with torch.no_grad():
        logits, _ = model(torch.tensor([seq[:3]]), cache=cache)
        torch.testing.assert_close(logits[0, -1], reference_logits(model, seq[:3]), atol=1e-5, rtol=0)
        for t in range(3, 16):
            logits, _ = model(torch.tensor([[seq[t]]]), cache=cache)
            torch.testing.assert_close(logits[0, -1], reference_logits(model, seq[:t + 1]),
                                       atol=1e-5, rtol=0)
    # one K/V set per kv_share group, n_kv_head heads, as many slots as its layers may look back
    hd = cfg.n_embd // cfg.n_head
    for group, k in enumerate(cache.k):
        layers = range(group * cfg.kv_share, min((group + 1) * cfg.kv_share, cfg.n_layer))
        slots = max(cfg.layer_window(i) or 16 for i in layers)
        assert k.shape == (1, cfg.kv_heads, slots, hd), (group, k.shape)
    assert len(cache.k) == -(-cfg.n_layer // cfg.kv_share)
    prompts = [seq[:2], seq[:5], seq[3:6]]  # ragged: left-padded in the cache

    def tokens(new, temperature, **kw):
        g = torch.Generator().manual_seed(0)
        return [t.tolist() for t in model.generate_stream(prompts, new, temperature=temperature,
                                                          generator=g, **kw)]

    assert tokens(10, 0) == tokens(10, 0, use_cache=False)  # greedy, inside block_size
    # past block_size, sampled from the same random stream: varied enough that a wrong mask or
    # position can't match by chance (greedy with these weights may repeat one token)
    sampled = tokens(40, 1.0)
    assert sampled == tokens(40, 1.0, use_cache=False)
    assert len({row[0] for row in sampled}) > 1


@pytest.mark.parametrize("name", ["rope", "none", "all"])
def test_decoding_past_block_size_is_the_banded_forward(name):
    """rope/none models decode past block_size without re-reading the context: the greedy
    tokens of 2 x block_size steps equal the hand-written float64 forward over the whole
    sequence where every layer sees at most block_size tokens back, and the logits of the
    model's own banded forward match it too."""
    model = randomize(tiny_model(**VARIANTS[name]))
    B = model.config.block_size
    prompt = random_batch(1, 5, seed=4)[0].tolist()
    cached = [int(t) for t in model.generate_stream([prompt], 2 * B, temperature=0)]
    seq = list(prompt)
    for _ in range(2 * B):
        seq.append(int(naive_logits(model, torch.tensor([seq]), band=B)[0, -1].argmax()))
    assert cached == seq[len(prompt):]
    assert len(set(cached)) > 2, "the test model should not just repeat one token"
    # teacher-forced through the cache, every position's logits, not just the argmax: a long
    # first chunk (more than the ring holds), then single tokens and chunks that wrap the ring
    idx = random_batch(1, 5 * B, seed=6)
    reference = naive_logits(model, idx, band=B)[0]  # (5B, V)
    cache = KVCache.for_model(model.config, 1, B)
    t, sizes = 0, [B + 3, 1, 4, 1, 1, 7, 1, B + 1]
    with torch.no_grad():
        while t < 5 * B:
            n = min(sizes[0] if sizes else 1, 5 * B - t)
            sizes = sizes[1:]
            logits, _ = model(idx[:, t:t + n], cache=cache, all_logits=True)
            torch.testing.assert_close(logits[0].double(), reference[t:t + n], atol=1e-5, rtol=0,
                                       msg=lambda m: f"positions {t}..{t + n - 1}: {m}")
            t += n
    idx = torch.tensor([seq])
    with torch.no_grad():
        ours = model(idx, all_logits=True, band=B)[0]
        crop = model(idx[:, -B:], all_logits=True)[0]
    reference = naive_logits(model, idx, band=B)
    torch.testing.assert_close(ours.double(), reference, atol=1e-5, rtol=0)
    # and the band is not the same as cropping: past block_size, layers see further back
    assert (crop[0, -1] - ours[0, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("W", [6, 24])
def test_context_window_is_the_band_for_rope_and_none(W):
    """context_window=W bounds every prediction of a rope/none model to W tokens back at every
    layer: the hand-written forward with band W, greedy, for a ragged batch. W may exceed
    block_size (16 here; how an XL-trained model decodes with the context it trained on)."""
    model = randomize(tiny_model(**VARIANTS["all"]))
    prompts = [random_batch(1, 3, seed=7)[0].tolist(), random_batch(1, 9, seed=8)[0].tolist()]
    cached = [t.tolist() for t in model.generate_stream(prompts, 20, temperature=0, context_window=W)]
    for row, prompt in enumerate(prompts):
        seq = list(prompt)
        for _ in range(20):
            seq.append(int(naive_logits(model, torch.tensor([seq]), band=W)[0, -1].argmax()))
        assert [step[row] for step in cached] == seq[len(prompt):], f"row {row}"


@pytest.mark.parametrize("kw, slots", [(dict(pos_emb="rope", attn_window=4), 4),
                                       (dict(pos_emb="rope"), 16),
                                       (dict(pos_emb="none", n_kv_head=1, attn_window=6,
                                             window_pattern="SSL", kv_share=2), 16)])
def test_cache_memory_stays_flat_as_the_sequence_grows(kw, slots):
    """A ring buffer per K/V set: a windowed layer holds its window, a full one block_size,
    whatever the length decoded (here 4 x block_size, one token at a time)."""
    model = randomize(tiny_model(**kw))
    cfg = model.config
    cache = KVCache.for_model(cfg, 2, cfg.block_size)
    sizes = []
    with torch.no_grad():
        model(random_batch(2, 3, seed=5), cache=cache)
        for t in range(4 * cfg.block_size):
            model(random_batch(2, 1, seed=t), cache=cache)
            sizes.append(cache.nbytes())
    per_slot = 2 * 2 * cfg.kv_heads * (cfg.n_embd // cfg.n_head) * 4  # k and v, B=2, fp32
    assert max(len(range(0, cfg.n_layer, cfg.kv_share)), 1) == len(cache.k)
    assert sizes[0] == sizes[-1] == sum(k.size(2) for k in cache.k) * per_slot
    assert max(k.size(2) for k in cache.k) == slots


# ----------------------------------------------------------------------------- through the scripts

def sample_text(out_dir, cwd, n, *extra):
    result = run_script("sample.py", f"--out_dir={out_dir}", "--device=cpu", "--num_samples=1",
                        f"--max_new_tokens={n}", "--start=A", "--checkpoint_name=last", *extra, cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split("-" * 15)[0][:-1]  # print() ends the sample with a newline


def eval_losses(stdout):
    return [float(line.split("train loss ")[1].split(",")[0]) for line in stdout.splitlines()
            if line.startswith("step ")]


def variant_flags(kw):
    return [f"--{k}={v}" for k, v in kw.items()]


# "all" combines every variant and runs in the fast suite; each one alone is marked slow (three
# script runs each, ~15 s on a busy 2-core machine)
@pytest.mark.parametrize("name", ["all", *(pytest.param(n, marks=pytest.mark.slow) for n in
                                          ("rope", "none", "gqa", "mqa", "window_SSSL", "kv_share"))])
def test_variant_trains_resumes_and_samples(name, char_dataset, tmp_path):
    out_dir = tmp_path / "out"
    flags = variant_flags(VARIANTS[name])
    result = run_train(char_dataset, out_dir, *flags, "--n_head=4", "--block_size=16",
                       "--max_iters=8", "--eval_interval=8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    first, last = eval_losses(result.stdout)
    assert last < first - 0.2, result.stdout
    ckpt = torch.load(out_dir / "last.pt", weights_only=True)
    assert {k: ckpt["model_args"][k] for k in VARIANTS[name]} == VARIANTS[name]
    result = run_train(char_dataset, out_dir, "--block_size=16", "--max_iters=10",
                       "--eval_interval=100", "--init_from=resume",
                       "--resume_checkpoint_name=last", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from" in result.stdout and "saved" in result.stdout
    assert len(sample_text(out_dir, tmp_path, 40)) == 41  # 'A' and 40 tokens: past block_size 16


def test_longer_block_size_from_a_learned_checkpoint(char_dataset, tmp_path):
    """Seed 002's flow: a block-16 model resumed at --block_size=32 grows wpe, trains (the Adam
    state of wpe still loads), saves the new size, and sample.py writes past 16 tokens. Its
    first checkpoint, with default settings, has exactly nanoGPT's model_args keys."""
    out_dir = tmp_path / "out"
    result = run_train(char_dataset, out_dir, "--block_size=16", "--max_iters=4", "--eval_interval=4",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    before = torch.load(out_dir / "last.pt", weights_only=True)
    assert set(before["model_args"]) == set(NANOGPT_MODEL_ARGS)
    # a variant setting on resume cannot change the architecture: it is named, not silently dropped
    result = run_train(char_dataset, out_dir, "--block_size=32", "--max_iters=8", "--eval_interval=4",
                       "--init_from=resume", "--resume_checkpoint_name=last", "--pos_emb=rope",
                       "--kv_share=1", "--n_layer=3", cwd=tmp_path)  # n_head, n_embd: the model's
    assert result.returncode == 0, result.stderr[-2000:]
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: block_size=32")]
    assert len(notes) == 1 and "16 new rows of wpe" in notes[0], result.stderr
    ignored = [line for line in result.stderr.splitlines() if "ignored" in line]
    assert ignored == ["note: n_layer=3, pos_emb='rope' ignored: the model from resume keeps its "
                       "own n_layer=2, pos_emb='learned' (these settings shape a model trained from "
                       "scratch)"]
    assert "micro-batch of 4 x 32 tokens" in result.stdout
    after = torch.load(out_dir / "last.pt", weights_only=True)
    assert after["model_args"]["block_size"] == 32 and set(after["model_args"]) == set(NANOGPT_MODEL_ARGS)
    assert after["model"]["transformer.wpe.weight"].shape == (32, 32)
    wpe_state = after["optimizer"]["state"][1]  # parameters() order: wte (tied), then wpe
    assert wpe_state["exp_avg"].shape == (32, 32) and wpe_state["exp_avg"][16:].abs().sum() > 0
    assert len(sample_text(out_dir, tmp_path, 40)) == 41


def test_extend_block_size_keeps_the_learned_rows():
    model = tiny_model()
    old = model.transformer.wpe.weight.detach().clone()
    model.extend_block_size(40, torch.Generator().manual_seed(0))
    new = model.transformer.wpe.weight.detach()
    assert new.shape == (40, 32) and model.config.block_size == 40
    assert torch.equal(new[:16], old)
    assert (new[16:] - old.mean(0)).std() < 0.03  # mean row plus noise of the init's size
    logits, _ = model(random_batch(1, 40))  # the longer context runs
    assert logits.shape == (1, 1, TINY["vocab_size"])
