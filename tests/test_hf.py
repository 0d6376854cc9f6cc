"""
Parity tests between model.py's GPT and Hugging Face's GPT2LMHeadModel (smallgpt/hf/gpt2.py, export.py).

    python -m pytest tests/test_hf.py -q

CPU only, offline (tiny random models, no downloads), 10-20 seconds. Skipped when
transformers is not installed.
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# set before transformers / huggingface_hub are imported: they read these once
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import smallgpt.hf.gpt2  # noqa: E402
from smallgpt.hf.convert import load_hf  # noqa: E402
from smallgpt.hf.gpt2 import save_hf_gpt2  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

TINY_HF = dict(n_layer=2, n_head=4, n_embd=32, n_positions=64)
TINY_OURS = dict(n_layer=2, n_head=4, n_embd=32, block_size=32)
# the README's figure for logits parity; measured 1.7e-6 with gelu_new (HF's tanh formula vs
# torch's GELU kernel round differently), 0 for the other flavours
TOL = 5e-6


def randomize(model):
    """Every parameter random and of order 0.1-1, unlike a fresh init (zero biases, unit
    LayerNorms, weights so small that logits barely depend on them): now a bias in the wrong
    place or the wrong GELU flavour moves the logits by far more than TOL (assert_gelu_matters)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "ln_" in name and name.endswith("weight")
                    else 0.15 * torch.randn_like(p))
    return model


def tiny_hf_dir(tmp_path, seed=0, **overrides):
    """A random GPT-2 saved with save_pretrained; returns (model, directory)."""
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(**{**TINY_HF, "vocab_size": 50257, **overrides}))
    randomize(hf).eval()
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir)
    return hf, str(hf_dir)


def hf_logits(hf, idx):
    with torch.no_grad():
        return hf(idx).logits


def our_logits(model, idx):
    with torch.no_grad():
        return model(idx, all_logits=True)[0]


def assert_gelu_matters(model, idx, reference):
    """The weights are large enough for the comparison to bite: with the other GELU flavour our
    logits miss `reference` by more than 100 * TOL. (Leaves `model` with the wrong flavour.)"""
    other = "none" if model.config.gelu == "tanh" else "tanh"
    for block in model.transformer.h:
        block.mlp.gelu = torch.nn.GELU(approximate=other)
    diff = (our_logits(model, idx) - reference).abs().max().item()
    assert diff > 100 * TOL, f"the other GELU moves the logits by only {diff:.1e}"


# ---------------------------------------------------------------------------- HF -> ours


@pytest.mark.parametrize("activation", ["gelu_new", "gelu_pytorch_tanh", "gelu"])
def test_load_matches_hf_logits_and_greedy_tokens(tmp_path, activation):
    hf, hf_dir = tiny_hf_dir(tmp_path, activation_function=activation)
    model = GPT.from_pretrained(hf_dir).eval()
    assert model.config.gelu == ("exact" if activation == "gelu" else "tanh")
    assert model.config.block_size == 64 and model.config.vocab_size == 50257

    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(1))
    ours, theirs = our_logits(model, idx), hf_logits(hf, idx)
    diff = (ours - theirs).abs().max().item()
    print(f"HF -> ours ({activation}): max abs logits difference {diff:.2e}")
    assert diff < TOL, f"logits differ by {diff}"

    # 20 greedy tokens: ours decodes with the KV cache, HF recomputes the whole prefix each step
    prompt = idx[:, :8]
    ours_tokens = model.generate(prompt, 20, temperature=0)
    seq = prompt
    for _ in range(20):
        seq = torch.cat([seq, hf_logits(hf, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(ours_tokens, seq)
    assert_gelu_matters(model, idx, theirs)


def test_dropout_override_and_nothing_else(tmp_path):
    _, hf_dir = tiny_hf_dir(tmp_path)
    model = GPT.from_pretrained(hf_dir, dict(dropout=0.25))
    assert model.config.dropout == 0.25
    assert model.transformer.drop.p == 0.25 and model.transformer.h[0].attn.dropout == 0.25
    with pytest.raises(ValueError, match="only override dropout"):
        GPT.from_pretrained(hf_dir, dict(n_layer=3))


@pytest.mark.parametrize("setting, value", [
    ("scale_attn_by_inverse_layer_idx", True),
    ("reorder_and_upcast_attn", True),
    ("n_inner", 64),
    ("activation_function", "relu"),
    ("scale_attn_weights", False),
    ("layer_norm_epsilon", 1e-6),
    ("tie_word_embeddings", False),
])
def test_refuses_hf_configs_we_cannot_represent(tmp_path, setting, value):
    # the config is checked before any weights are read, so a config.json alone is enough
    GPT2Config(**TINY_HF, vocab_size=100, bos_token_id=None, eos_token_id=None,
               **{setting: value}).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=setting):
        GPT.from_pretrained(str(tmp_path))


def test_refuses_other_model_types(tmp_path):
    transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, vocab_size=100).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'llama' model"):
        load_hf(str(tmp_path))


def test_hub_name_offline_gives_one_line_hint(monkeypatch):
    asked = []

    def offline(name, *args, **kwargs):
        asked.append(name)
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    # belt and braces next to HF_HUB_OFFLINE: a machine with gpt2 cached must not load it here
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", offline)
    for name in ("gpt2", "gpt2-xl", "openai-community/gpt2"):
        with pytest.raises(RuntimeError, match="--init_from=/path/to/dir") as err:
            GPT.from_pretrained(name)
        message = str(err.value)
        assert "\n" not in message and name in message and "model.safetensors" in message
    assert asked == ["gpt2", "gpt2-xl", "openai-community/gpt2"]


def test_bad_local_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_hf(str(tmp_path / "missing") + "/")
    with pytest.raises(ValueError, match="no config.json"):
        load_hf(str(tmp_path))
    GPT2Config(**TINY_HF, vocab_size=100, bos_token_id=None,
               eos_token_id=None).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model.safetensors or pytorch_model.bin"):
        load_hf(str(tmp_path))


def test_missing_transformers_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(RuntimeError, match="pip install transformers"):
        load_hf(str(tmp_path))


def test_old_checkpoint_buffers_are_dropped_and_conv1d_transposed():
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**TINY_HF, vocab_size=100, bos_token_id=None,
                                    eos_token_id=None))
    hf_state = dict(hf.state_dict())
    # what transformers < 4.x saved next to the weights: the causal mask and its fill value
    hf_state["transformer.h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
    hf_state["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    state = smallgpt.hf.gpt2.state_dict_from_hf(hf_state)
    model = GPT(GPTConfig(**{**TINY_OURS, "block_size": 64}, vocab_size=100, gelu="tanh"))
    model.load_state_dict(state)  # strict
    assert "transformer.h.0.attn.c_attn.bias" in state
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight,
                       hf.transformer.h[1].mlp.c_fc.weight.t())


# ---------------------------------------------------------------------------- ours -> HF


@pytest.mark.parametrize("config", [
    dict(vocab_size=65, gelu="exact", bias=True),
    dict(vocab_size=65, gelu="tanh", bias=False),
    dict(vocab_size=50304, gelu="exact", bias=False),  # GPT-2 BPE padded to a multiple of 64
])
def test_export_loads_in_transformers_with_same_logits(tmp_path, config):
    torch.manual_seed(0)
    model = randomize(GPT(GPTConfig(**TINY_OURS, **config))).eval()
    save_hf_gpt2(model, tmp_path)
    hf, info = GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["activation_function"] == {"exact": "gelu", "tanh": "gelu_new"}[config["gelu"]]
    assert saved["vocab_size"] == config["vocab_size"] and saved["n_positions"] == 32
    assert saved["eos_token_id"] == (50256 if config["vocab_size"] > 50256 else None)

    generator = torch.Generator().manual_seed(1)
    idx = torch.randint(0, config["vocab_size"], (2, 32), generator=generator)
    theirs = hf_logits(hf.eval(), idx)
    diff = (our_logits(model, idx) - theirs).abs().max().item()
    print(f"ours -> HF {config}: max abs logits difference {diff:.2e}")
    assert diff < TOL, f"logits differ by {diff}"
    assert_gelu_matters(model, idx, theirs)


def test_hf_to_ours_to_hf_is_identical(tmp_path):
    hf, hf_dir = tiny_hf_dir(tmp_path)
    model = GPT.from_pretrained(hf_dir)
    save_hf_gpt2(model, tmp_path / "back")
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "back")
    original, returned = hf.state_dict(), back.state_dict()
    assert original.keys() == returned.keys()
    for key in original:
        assert torch.equal(original[key], returned[key]), key
    assert back.config.activation_function == "gelu_new"


def test_export_refuses_what_gpt2_cannot_hold(tmp_path):
    @dataclass
    class FutureConfig(GPTConfig):  # a config field model.py may grow one day
        rotary: bool = False

    model = GPT(GPTConfig(**TINY_OURS, vocab_size=65))
    model.config = FutureConfig(**TINY_OURS, vocab_size=65, rotary=True)
    with pytest.raises(ValueError, match="no equivalent of rotary=True"):
        save_hf_gpt2(model, tmp_path / "a")
    assert not (tmp_path / "a").exists()

    model.config = FutureConfig(**TINY_OURS, vocab_size=65)  # at its default: plain GPT-2
    save_hf_gpt2(model, tmp_path / "b")

    model.extra_scale = torch.nn.Parameter(torch.ones(32))  # a parameter GPT-2 has no slot for
    with pytest.raises(ValueError, match="no place for.*extra_scale"):
        save_hf_gpt2(model, tmp_path / "c")


def _bytes_to_unicode():
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest move to 256+."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def tiny_bpe_dir(tmp_path):
    """A tiny BPE in OpenAI's file names: 256 byte tokens, 4 merges that spell "hello" and
    <|endoftext|>. Returns (folder, vocab)."""
    alphabet = list(_bytes_to_unicode().values())
    merges = ["h e", "l l", "he ll", "hell o"]
    vocab = {c: i for i, c in enumerate(alphabet)}
    for merge in merges:
        vocab[merge.replace(" ", "")] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    bpe_dir = tmp_path / "bpe"
    bpe_dir.mkdir()
    (bpe_dir / "encoder.json").write_text(json.dumps(vocab))
    (bpe_dir / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return bpe_dir, vocab


def test_export_writes_tokenizer_from_tokenizer_dir(tmp_path):
    bpe_dir, vocab = tiny_bpe_dir(tmp_path)
    model = GPT(GPTConfig(**TINY_OURS, vocab_size=len(vocab) + 3))
    written = save_hf_gpt2(model, tmp_path / "hf", tokenizer_dir=str(bpe_dir))
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= set(written)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.encode("hello") == [vocab["hello"]]
    assert tokenizer.encode("hello!") == [vocab["hello"], vocab["!"]]

    small = GPT(GPTConfig(**TINY_OURS, vocab_size=65))
    with pytest.raises(ValueError, match="tokens but the model only 65"):
        save_hf_gpt2(small, tmp_path / "small", tokenizer_dir=str(bpe_dir))
    with pytest.raises(ValueError, match="encoder.json \\+ vocab.bpe"):
        save_hf_gpt2(small, tmp_path / "small", tokenizer_dir=str(tmp_path))
    assert not (tmp_path / "small").exists()


# ---------------------------------------------------------------------------- export.py CLI


def run_export(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "export.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_export_cli_on_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = GPTConfig(**TINY_OURS, vocab_size=65, bias=False)
    model = randomize(GPT(config)).eval()
    # as a compiled nanoGPT run saves it: '_orig_mod.' prefixes and the causal-mask buffers
    state = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    state["_orig_mod.transformer.h.0.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
    torch.save({"model": state, "model_args": config.to_model_args(), "iter_num": 0,
                "best_val_loss": 1.0, "config": {}}, tmp_path / "ckpt.pt")

    result = run_export(f"--out_dir={tmp_path}", f"--hf_dir={tmp_path / 'hf'}")
    assert result.returncode == 0, result.stderr
    assert "max abs logits difference" in result.stdout
    assert "GPT2LMHeadModel.from_pretrained" in result.stdout

    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 65, (1, 32), generator=torch.Generator().manual_seed(2))
    diff = (our_logits(model, idx) - hf_logits(hf, idx)).abs().max().item()
    print(f"export.py checkpoint -> HF: max abs logits difference {diff:.2e}")
    assert diff < TOL

    missing = run_export(f"--out_dir={tmp_path / 'nowhere'}")
    assert missing.returncode != 0
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: no checkpoint at {tmp_path / 'nowhere' / 'ckpt.pt'}; ")
