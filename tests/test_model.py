"""
Tests for model.py: the GPT module itself (not sampling: see test_sampling.py).

    python -m pytest tests/test_model.py -q

CPU only, offline, a few seconds. Models are tiny (2 layers, 4 heads, 32 wide). The parity test
checks model.py against a naive forward written here from the GPT-2 recipe (explicit layernorm,
per-head attention with a tril mask, erf/tanh GELU, tied head) in float64, so a shared mistake
in model.py's fused and fallback paths can't hide.
"""

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from smallgpt.checkpoint import clean_state_dict  # noqa: E402
from model import GPT, GPTConfig, NANOGPT_MODEL_ARGS  # noqa: E402

TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=65, dropout=0.0)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides})).eval()


def randomize(model, seed=0, std=0.3):
    """Weights far from GPT-2's init (and non-trivial layernorm gains/biases), so that attention
    is peaked and logits are O(1): a wrong mask or scale then moves the logits visibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = 1.0 if "ln_" in name and name.endswith(".weight") else 0.0  # layernorm gains ~1
            p.copy_(torch.randn(p.shape, generator=g) * std + gain)
    return model


def random_batch(B, T, V, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g)


# ----------------------------------------------------------------------------- a naive reference

def naive_logits(model, idx):
    """GPT-2's forward written out by hand in float64 from model's weights: (B, T, V)."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    C, H = cfg.n_embd, cfg.n_head
    hd = C // H
    B, T = idx.shape

    def layernorm(x, prefix):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, eps 1e-5 as nn.LayerNorm
        y = (x - mean) / torch.sqrt(var + 1e-5) * sd[prefix + ".weight"]
        return y + sd[prefix + ".bias"] if prefix + ".bias" in sd else y

    def linear(x, prefix):
        y = x @ sd[prefix + ".weight"].T
        return y + sd[prefix + ".bias"] if prefix + ".bias" in sd else y

    def gelu(x):
        if cfg.gelu == "tanh":
            return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][torch.arange(T)]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}"
        h = layernorm(x, p + ".ln_1")
        qkv = linear(h, p + ".attn.c_attn")  # (B, T, 3C)
        heads = []
        for head in range(H):
            q = qkv[..., 0 * C + head * hd: 0 * C + (head + 1) * hd]
            k = qkv[..., 1 * C + head * hd: 1 * C + (head + 1) * hd]
            v = qkv[..., 2 * C + head * hd: 2 * C + (head + 1) * hd]
            scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (B, T, T)
            scores = scores.masked_fill(~causal, float("-inf"))
            heads.append(torch.softmax(scores, dim=-1) @ v)
        x = x + linear(torch.cat(heads, dim=-1), p + ".attn.c_proj")
        h = layernorm(x, p + ".ln_2")
        x = x + linear(gelu(linear(h, p + ".mlp.c_fc")), p + ".mlp.c_proj")
    x = layernorm(x, "transformer.ln_f")
    return x @ sd["transformer.wte.weight"].T  # tied head


@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("variant", [{}, {"bias": False}, {"gelu": "tanh"}])
def test_logits_match_a_naive_reference(flash, variant):
    model = randomize(tiny_model(**variant))
    for block in model.transformer.h:
        block.attn.flash = flash
    idx = random_batch(3, 16, TINY["vocab_size"])
    logits, _ = model(idx, all_logits=True)
    ref = naive_logits(model, idx)
    assert ref.abs().max() > 1.0  # the weights are large enough for the comparison to bite
    torch.testing.assert_close(logits.double(), ref, atol=1e-5, rtol=1e-5)


def test_fused_attention_equals_the_fallback():
    model = randomize(tiny_model())
    idx = random_batch(2, 16, TINY["vocab_size"])
    fused, _ = model(idx, all_logits=True)
    for block in model.transformer.h:
        block.attn.flash = False
    plain, _ = model(idx, all_logits=True)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


def test_the_future_does_not_leak_into_the_past():
    model = randomize(tiny_model())
    idx = random_batch(1, 16, TINY["vocab_size"])
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % TINY["vocab_size"]
    a, _ = model(idx, all_logits=True)
    b, _ = model(changed, all_logits=True)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


# ----------------------------------------------------------------------------- forward contract

def test_loss_at_init_is_about_log_vocab():
    model = tiny_model()
    idx = random_batch(8, 16, TINY["vocab_size"])
    targets = random_batch(8, 16, TINY["vocab_size"], seed=2)
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(TINY["vocab_size"])) < 0.1, loss.item()


def test_output_shapes():
    model = tiny_model()
    B, T, V = 3, 10, TINY["vocab_size"]
    idx = random_batch(B, T, V)
    logits, loss = model(idx, idx)
    assert logits.shape == (B, T, V) and loss.dim() == 0
    logits, loss = model(idx)
    assert logits.shape == (B, 1, V) and loss is None
    all_logits, _ = model(idx, all_logits=True)
    assert all_logits.shape == (B, T, V)
    torch.testing.assert_close(all_logits[:, -1:], logits)


def test_targets_minus_one_are_ignored():
    model = randomize(tiny_model())
    idx = random_batch(2, 8, TINY["vocab_size"])
    targets = random_batch(2, 8, TINY["vocab_size"], seed=3)
    targets[:, :5] = -1
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits[:, 5:].reshape(-1, logits.size(-1)), targets[:, 5:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_longer_than_block_size_is_refused():
    model = tiny_model()
    with pytest.raises(AssertionError, match="block_size"):
        model(random_batch(1, TINY["block_size"] + 1, TINY["vocab_size"]))


def test_a_few_adam_steps_overfit_one_batch():
    model = tiny_model()
    model.train()
    idx = random_batch(4, 16, TINY["vocab_size"])
    targets = random_batch(4, 16, TINY["vocab_size"], seed=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(40):  # random targets: only memorising brings the loss from ln(65) to ~0
        _, loss = model(idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _, loss = model(idx, targets)
    assert loss.item() < 0.1, loss.item()


def test_dropout_is_active_in_train_mode_only():
    model = tiny_model(dropout=0.5)
    idx = random_batch(2, 16, TINY["vocab_size"])
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0])
    model.train()
    assert not torch.allclose(model(idx)[0], model(idx)[0])


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_cpu_dropout_matches_dropouts_definition(p, dtype):
    """smallgpt.fast_cpu.Dropout's CPU mask: each element kept with probability 1 - p (within sampling
    error of 1M draws), kept values scaled by 1/(1-p), the gradient uses the same mask, eval
    mode is the identity, and the torch random stream drives it (same seed, same mask)."""
    from smallgpt.fast_cpu import Dropout
    drop = Dropout(p)
    x = torch.ones(1000, 1000, dtype=dtype, requires_grad=True)
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    frac = kept.float().mean().item()
    assert abs(frac - (1 - p)) < 5 * (p * (1 - p) / 1e6) ** 0.5  # 5 standard errors
    torch.testing.assert_close(y[kept].float(), torch.full_like(y[kept].float(), 1 / (1 - p)),
                               rtol=1e-2 if dtype == torch.bfloat16 else 2e-5, atol=0)  # p to 1/65536
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d(sum y)/dx = the scaled mask itself
    torch.manual_seed(0)
    assert torch.equal(drop(x.detach()), y.detach())
    drop.eval()
    assert torch.equal(drop(x.detach()), x.detach())


# ----------------------------------------------------------------------------- parameters

def test_weight_tying():
    model = tiny_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    # a checkpoint holds both names (as nanoGPT's does) for one tensor: changing the embedding
    # of token 5 changes its output row too, in the model and in what state_dict() saves
    state = model.state_dict()
    assert {"lm_head.weight", "transformer.wte.weight"} <= set(state)
    with torch.no_grad():
        model.transformer.wte.weight[5] += 1.0
    assert torch.equal(model.lm_head.weight[5], model.transformer.wte.weight[5])
    assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])


def test_num_params_by_hand():
    V, T, C, L = TINY["vocab_size"], TINY["block_size"], TINY["n_embd"], TINY["n_layer"]
    # ln_1, c_attn, attn.c_proj, ln_2, c_fc, mlp.c_proj (weights + biases)
    per_layer = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C)
    without_wpe = V * C + L * per_layer + 2 * C
    model = tiny_model()
    assert model.get_num_params() == without_wpe
    assert model.get_num_params(non_embedding=False) == without_wpe + T * C
    no_bias = tiny_model(bias=False)
    per_layer_no_bias = C + 3 * C * C + C * C + C + 4 * C * C + 4 * C * C
    assert no_bias.get_num_params() == V * C + L * per_layer_no_bias + C


def test_crop_block_size_keeps_the_first_positions():
    model = randomize(tiny_model(block_size=32))
    idx = random_batch(2, 12, TINY["vocab_size"])
    before, _ = model(idx, all_logits=True)
    first_rows = model.transformer.wpe.weight[:12].detach().clone()
    model.crop_block_size(12)
    assert model.config.block_size == 12
    assert model.transformer.wpe.weight.shape == (12, TINY["n_embd"])
    torch.testing.assert_close(model.transformer.wpe.weight.detach(), first_rows)
    after, _ = model(idx, all_logits=True)
    torch.testing.assert_close(after, before)
    with pytest.raises(AssertionError):
        model(random_batch(1, 13, TINY["vocab_size"]))
    # the cropped model still trains (the new wpe is a registered parameter)
    assert any(p is model.transformer.wpe.weight for p in model.parameters())
    with pytest.raises(AssertionError):
        model.crop_block_size(13)


def test_configure_optimizers_groups():
    model = tiny_model()
    optimizer = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95),
                                           device_type="cpu")
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    named = dict(model.named_parameters())
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    matrices = {id(p) for n, p in named.items() if n.endswith(("wte.weight", "wpe.weight"))
                or (n.endswith(".weight") and ("c_attn" in n or "c_proj" in n or "c_fc" in n))}
    vectors = {id(p) for n, p in named.items() if n.endswith(".bias") or ".ln_" in n or "ln_f" in n}
    assert ids(decay["params"]) == matrices
    assert ids(no_decay["params"]) == vectors
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in decay["params"]) + sum(p.numel() for p in no_decay["params"]) == total
    # and it steps
    _, loss = model(random_batch(2, 8, TINY["vocab_size"]), random_batch(2, 8, TINY["vocab_size"], 5))
    loss.backward()
    before = model.transformer.wte.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.transformer.wte.weight)


def test_estimate_mfu_by_hand():
    model = tiny_model()
    cfg = model.config
    N = model.get_num_params()
    flops_per_token = 6 * N + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * cfg.block_size
    # 10 fwd/bwd per iter, 0.5 s per iter, against a 1 TFLOP/s peak
    expected = flops_per_token * cfg.block_size * 10 / 0.5 / 1e12
    assert model.estimate_mfu(10, 0.5, peak_flops=1e12) == pytest.approx(expected)


# ----------------------------------------------------------------------------- config

def test_model_args_are_nanogpts_seven_keys_by_default():
    args = GPTConfig().to_model_args()
    assert list(args) == ["n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout"]
    assert set(NANOGPT_MODEL_ARGS) == set(args)
    assert args == dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=True,
                        vocab_size=50304, dropout=0.0)
    args = GPTConfig(**TINY).to_model_args()
    assert "gelu" not in args and GPTConfig(**args) == GPTConfig(**TINY)


def test_model_args_add_gelu_only_when_tanh():
    args = GPTConfig(**TINY, gelu="tanh").to_model_args()
    assert args["gelu"] == "tanh" and len(args) == 8
    assert "gelu" not in GPTConfig(**TINY, gelu="exact").to_model_args()
    assert GPTConfig(**args).gelu == "tanh"


def test_config_errors():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="gelu"):
        GPTConfig(gelu="relu")


# ----------------------------------------------------------------------------- loading

def test_load_compiled_nanogpt_state_dict():
    """nanoGPT's checkpoints can carry torch.compile's '_orig_mod.' prefix and, without flash
    attention, a '.attn.bias' causal-mask buffer per layer: both must load into our model."""
    source = randomize(tiny_model())
    T = TINY["block_size"]
    state = {"_orig_mod." + k: v.clone() for k, v in source.state_dict().items()}
    for i in range(TINY["n_layer"]):
        state[f"_orig_mod.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
    assert "_orig_mod.transformer.h.0.attn.c_attn.bias" in state  # a real weight named '...bias'

    cleaned = clean_state_dict(state)
    assert "transformer.h.0.attn.c_attn.bias" in cleaned
    assert not any(k.endswith(".attn.bias") or k.startswith("_orig_mod.") for k in cleaned)

    loaded = GPT.from_checkpoint({"model": state, "model_args": source.config.to_model_args()}).eval()
    idx = random_batch(2, T, TINY["vocab_size"])
    torch.testing.assert_close(loaded(idx, all_logits=True)[0], source(idx, all_logits=True)[0])
    with pytest.raises(RuntimeError):  # without cleaning, strict loading refuses these keys
        tiny_model().load_state_dict(state)
