"""
Parity tests between model.py's rotary attention variants (pos_emb='rope' with n_kv_head and
attn_window) and Hugging Face's Starcoder2ForCausalLM, both ways (smallgpt/hf/starcoder2.py, export.py),
plus the variants no Hugging Face architecture here can hold.

    python -m pytest tests/test_hf_variants.py -q

CPU only, offline: tiny random models (2 layers, 32 wide), no downloads. The reference for
import is a Starcoder2ForCausalLM built here by transformers itself, not by our exporter.
"""

import json

import pytest
import torch

from conftest import (error_lines, make_text, needs_gpt2_bpe, randomize_weights, run_script,
                      run_train, script_env)
# GPT-2's helpers; importing test_hf also sets HF_HUB_OFFLINE before transformers loads
from test_hf import assert_gelu_matters, hf_logits, our_logits, run_export, tiny_bpe_dir

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, Starcoder2Config, Starcoder2ForCausalLM  # noqa: E402

from smallgpt.hf.convert import save_hf  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

# measured: 0 for MHA and windowed layers (the same torch kernel as transformers), up to 5.3e-6
# for GQA/MQA without a mask (transformers hands the grouped heads to SDPA's enable_gqa, we repeat
# them); a window one token off or the other GELU misses by more than 100 * TOL
TOL = 2e-5
VOCAB = 96  # not GPT-2's: no bos/eos, so HF's generate never stops early
SEQ = 32    # tokens per row; windows below are shorter

# name: (our GPTConfig variant settings, the same model as Starcoder2Config settings)
VARIANTS = {
    "mha": (dict(n_kv_head=0),
            dict(num_key_value_heads=4)),
    "gqa": (dict(n_kv_head=2, rope_theta=500.0, gelu="tanh"),
            dict(num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                 hidden_act="gelu_pytorch_tanh")),
    "mqa": (dict(n_kv_head=1),
            dict(num_key_value_heads=1)),
    "window": (dict(n_kv_head=2, attn_window=5),
               dict(num_key_value_heads=2, sliding_window=5)),
}


def tiny_starcoder2(tmp_path, seed=0, **settings):
    """A random Starcoder2ForCausalLM made by transformers, saved to tmp_path/hf."""
    torch.manual_seed(seed)
    config = Starcoder2Config(**{
        "hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": SEQ, "vocab_size": VOCAB,
        "hidden_act": "gelu", "bos_token_id": None, "eos_token_id": None, **settings})
    hf = randomize_weights(Starcoder2ForCausalLM(config), seed).eval()
    hf.save_pretrained(tmp_path / "hf")
    return hf, str(tmp_path / "hf")


def tiny_rope_gpt(seed=0, **settings):
    torch.manual_seed(seed)
    config = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=SEQ, vocab_size=VOCAB,
                       pos_emb="rope", **settings)
    return randomize_weights(GPT(config), seed).eval()


def random_tokens(seed=1, T=SEQ):
    return torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(seed))


def assert_logits_match(model, hf, idx, what):
    theirs = hf_logits(hf, idx)
    diff = (our_logits(model, idx) - theirs).abs().max().item()
    print(f"{what}: max abs logits difference {diff:.2e} (logits up to "
          f"{theirs.abs().max().item():.1f})")
    assert diff < TOL, f"logits differ by {diff}"
    return theirs


def assert_window_off_by_one_shows(model, idx, reference):
    """With a window one token wider or narrower, our logits miss `reference` by more than
    100 * TOL: a window shorter than the sequence tells the two conventions apart."""
    window = model.config.attn_window
    assert 1 < window < idx.size(1)
    for other in (window - 1, window + 1):
        for block in model.transformer.h:
            block.attn.attn_window = other
        diff = (our_logits(model, idx) - reference).abs().max().item()
        assert diff > 100 * TOL, f"window {other} instead of {window} moves logits by {diff:.1e}"
    for block in model.transformer.h:
        block.attn.attn_window = window


def one_line_refusal(call):
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------- Starcoder2 -> ours


@pytest.mark.parametrize("name", VARIANTS)
def test_starcoder2_loads_with_same_logits(tmp_path, name):
    ours_settings, hf_settings = VARIANTS[name]
    hf, hf_dir = tiny_starcoder2(tmp_path, **hf_settings)
    model = GPT.from_pretrained(hf_dir).eval()
    expected = GPTConfig(**{"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": SEQ,
                            "vocab_size": VOCAB, "pos_emb": "rope", "gelu": "exact",
                            **ours_settings})
    assert model.config == expected

    idx = random_tokens()
    reference = assert_logits_match(model, hf, idx, f"Starcoder2 -> ours ({name})")
    if model.config.attn_window:
        assert_window_off_by_one_shows(model, idx, reference)
    assert_gelu_matters(model, idx, reference)


def test_starcoder2_dropout_override(tmp_path):
    _, hf_dir = tiny_starcoder2(tmp_path, num_key_value_heads=2, attention_dropout=0.1)
    assert GPT.from_pretrained(hf_dir).config.dropout == 0.0  # like GPT-2: HF's only records training
    model = GPT.from_pretrained(hf_dir, dict(dropout=0.2))
    assert model.config.dropout == 0.2 and model.transformer.h[0].attn.dropout == 0.2


@pytest.mark.parametrize("setting, value", [
    ("hidden_act", "relu"),
    ("intermediate_size", 64),
    ("norm_epsilon", 1e-6),
    ("tie_word_embeddings", False),
    ("rope_type", {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    ("partial_rotary_factor", {"rope_type": "default", "rope_theta": 10000.0,
                               "partial_rotary_factor": 0.5}),
    ("head_dim", 16),
])
def test_refuses_starcoder2_configs_we_cannot_represent(tmp_path, setting, value):
    key = "rope_parameters" if setting in ("rope_type", "partial_rotary_factor") else setting
    # the config is checked before any weights are read, so a config.json alone is enough
    Starcoder2Config(**{"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "vocab_size": VOCAB, "bos_token_id": None,
                        "eos_token_id": None, key: value}).save_pretrained(tmp_path)
    message = one_line_refusal(lambda: GPT.from_pretrained(str(tmp_path)))
    assert f"{setting}=" in message and "cannot represent" in message


def test_use_bias_false_loads_only_with_zero_layernorm_biases(tmp_path):
    """Starcoder2's use_bias=False keeps LayerNorm biases; our bias=False has none, so only
    zero ones (what export writes) load, and then the logits are HF's."""
    hf, hf_dir = tiny_starcoder2(tmp_path, num_key_value_heads=2, use_bias=False)
    message = one_line_refusal(lambda: GPT.from_pretrained(hf_dir))
    assert "use_bias=False" in message and "norm.bias" in message, message

    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name and name.endswith(".bias"):
                p.zero_()
    hf.save_pretrained(tmp_path / "zero")
    model = GPT.from_pretrained(str(tmp_path / "zero")).eval()
    assert model.config.bias is False and model.config.n_kv_head == 2
    assert_logits_match(model, hf, random_tokens(), "Starcoder2 use_bias=False -> ours")


# ---------------------------------------------------------------------------- ours -> Starcoder2


EXPORTS = {
    **{name: ours for name, (ours, _) in VARIANTS.items()},
    "window-pattern-all-S": dict(n_kv_head=1, attn_window=4, window_pattern="SS"),
    "no-bias-tanh": dict(n_kv_head=2, attn_window=6, bias=False, gelu="tanh"),
}


@pytest.mark.parametrize("name", EXPORTS)
def test_export_loads_as_starcoder2_with_same_logits_and_greedy_tokens(tmp_path, capfd, name):
    model = tiny_rope_gpt(**EXPORTS[name])
    save_hf(model, tmp_path)
    capfd.readouterr()
    transformers.utils.logging.disable_progress_bar()  # its bar goes to stderr too
    hf, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    hf.eval()
    assert type(hf) is Starcoder2ForCausalLM
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert capfd.readouterr().err == "", "transformers warned while loading the export"

    cfg = model.config
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "starcoder2"
    assert saved["num_key_value_heads"] == cfg.kv_heads
    assert saved["sliding_window"] == (cfg.attn_window or None)
    assert saved["rope_parameters"] == {"rope_type": "default", "rope_theta": cfg.rope_theta}
    assert saved["hidden_act"] == {"exact": "gelu", "tanh": "gelu_pytorch_tanh"}[cfg.gelu]
    assert saved["use_bias"] == cfg.bias and saved["max_position_embeddings"] == SEQ

    idx = random_tokens()
    reference = assert_logits_match(model, hf, idx, f"ours -> Starcoder2 ({name})")
    if cfg.attn_window:
        assert_window_off_by_one_shows(model, idx, reference)

    # greedy up to block_size: HF's generate with its own (sliding-window) cache, ours with ours
    prompt = idx[:, :8]
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                         max_new_tokens=SEQ - 8, min_new_tokens=SEQ - 8)
    assert torch.equal(model.generate(prompt, SEQ - 8, temperature=0), theirs)


@pytest.mark.parametrize("name", EXPORTS)
def test_export_then_import_is_identical(tmp_path, name):
    model = tiny_rope_gpt(**EXPORTS[name])
    save_hf(model, tmp_path)
    back = GPT.from_pretrained(str(tmp_path))
    # the same model_args, except that an all-'S' pattern is stored as what it means: no pattern
    expected = {**model.config.to_model_args(), "window_pattern": ""}
    assert {**back.config.to_model_args(), "window_pattern": ""} == expected
    original, returned = model.state_dict(), back.state_dict()
    assert original.keys() == returned.keys()
    for key in original:
        assert torch.equal(original[key], returned[key]), key


def test_export_writes_the_tokenizer_for_starcoder2_too(tmp_path):
    bpe_dir, vocab = tiny_bpe_dir(tmp_path)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=SEQ, vocab_size=len(vocab),
                          pos_emb="rope", n_kv_head=2))
    written = save_hf(model, tmp_path / "hf", tokenizer_dir=str(bpe_dir))
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= set(written)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf").encode("hello!") == \
        [vocab["hello"], vocab["!"]]


def test_all_full_window_pattern_exports_without_a_window(tmp_path):
    """window_pattern='L' makes every layer full: Starcoder2's sliding_window=None, the same model."""
    model = tiny_rope_gpt(n_kv_head=2, attn_window=4, window_pattern="L")
    save_hf(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.sliding_window is None
    assert_logits_match(model, hf, random_tokens(), "ours -> Starcoder2 (window_pattern='L')")


# ---------------------------------------------------------------------------- refusals


REFUSED = {
    # variant settings -> the words the refusal must contain
    "mixed-window-pattern": (dict(pos_emb="rope", attn_window=4, window_pattern="SL"),
                             "Starcoder2", "window_pattern='SL'"),
    "kv-share": (dict(pos_emb="rope", kv_share=2), "Starcoder2", "kv_share=2"),
    "no-positions": (dict(pos_emb="none"), "GPT-2", "pos_emb='none'"),
    "learned-gqa": (dict(n_kv_head=2), "GPT-2", "n_kv_head=2"),
    "learned-window": (dict(attn_window=4), "GPT-2", "attn_window=4"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_export_refuses_variants_in_one_line_and_writes_nothing(tmp_path, name):
    settings, architecture, setting = REFUSED[name]
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=SEQ, vocab_size=VOCAB,
                          **settings))
    message = one_line_refusal(lambda: save_hf(model, tmp_path / "hf"))
    assert message.startswith(f"cannot export to Hugging Face {architecture}: ") and \
        setting in message, message
    assert not (tmp_path / "hf").exists()


def test_export_script_refuses_a_mixed_window_in_one_line(tmp_path):
    config = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=SEQ, vocab_size=VOCAB,
                       pos_emb="rope", attn_window=4, window_pattern="LS")
    torch.save({"model": GPT(config).state_dict(), "model_args": config.to_model_args(),
                "iter_num": 0, "best_val_loss": 1.0, "config": {}}, tmp_path / "ckpt.pt")
    result = run_export(f"--out_dir={tmp_path}", f"--hf_dir={tmp_path / 'hf'}")
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "window_pattern='LS'" in lines[0], result.stderr
    assert not (tmp_path / "hf").exists()


# ---------------------------------------------------------------------------- the scripts


def test_train_export_import_round_trip(char_dataset, tmp_path):
    """train.py makes a rotary GQA + window checkpoint; export.py writes a Starcoder2 and checks
    it; transformers computes our logits; GPT.from_pretrained gives back the same weights."""
    out_dir, hf_dir = tmp_path / "out", tmp_path / "hf"
    result = run_train(char_dataset, out_dir, "--pos_emb=rope", "--n_head=4", "--n_kv_head=2",
                       "--attn_window=8", "--rope_theta=500", "--max_iters=4",
                       "--eval_interval=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_script("export.py", f"--out_dir={out_dir}", f"--hf_dir={hf_dir}", cwd=tmp_path,
                        env=script_env(HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "max abs logits difference" in result.stdout
    assert "Starcoder2ForCausalLM.from_pretrained" in result.stdout

    from smallgpt.checkpoint import load_checkpoint
    model = GPT.from_checkpoint(load_checkpoint(str(out_dir / "ckpt.pt"))).eval()
    assert model.config.attn_window == 8 and model.config.kv_heads == 2
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    vocab = model.config.vocab_size
    idx = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(3))
    diff = (our_logits(model, idx) - hf_logits(hf, idx)).abs().max().item()
    print(f"train.py -> export.py -> Starcoder2: max abs logits difference {diff:.2e}")
    assert diff < TOL

    back = GPT.from_pretrained(str(hf_dir))
    assert back.config.to_model_args() == model.config.to_model_args()
    for key, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key


@needs_gpt2_bpe
def test_sample_and_train_init_from_a_starcoder2_folder(tmp_path):
    """sample.py --init_from=<Starcoder2 folder> writes HF's greedy tokens, and train.py starts
    from the folder as a rotary model with its n_kv_head and window."""
    import smallgpt.prepare
    import tiktoken

    hf, hf_dir = tiny_starcoder2(tmp_path, num_key_value_heads=2, sliding_window=6,
                                 vocab_size=50257, max_position_embeddings=64)
    prompt = "Sancho said"
    enc = tiktoken.get_encoding("gpt2")
    ids = torch.tensor([enc.encode(prompt)])
    expected = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                           max_new_tokens=12, min_new_tokens=12)
    env = script_env(HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1)
    result = run_script("sample.py", f"--init_from={hf_dir}", f"--start={prompt}",
                        "--num_samples=1", "--max_new_tokens=12", "--temperature=0",
                        "--device=cpu", "--dtype=float32", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip("\n") == enc.decode(expected[0].tolist()).strip("\n")

    data = tmp_path / "bpe"
    data.mkdir()
    (tmp_path / "text.txt").write_text(make_text(10_000), encoding="utf-8")
    smallgpt.prepare.prepare_bpe(str(data), url=None, argv=[f"--input={tmp_path / 'text.txt'}"])
    out_dir = tmp_path / "out"
    result = run_train(data, out_dir, f"--init_from={hf_dir}", "--block_size=32",
                       "--max_iters=2", "--eval_interval=2", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"initializing from Starcoder2 weights: {hf_dir}" in result.stdout
    args = torch.load(out_dir / "ckpt.pt", weights_only=True)["model_args"]
    assert (args["pos_emb"], args["n_kv_head"], args["attn_window"]) == ("rope", 2, 6)
