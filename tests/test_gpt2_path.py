"""
The GPT-2 workflow end to end, offline: BPE data -> finetune from a (tiny, random) Hugging Face
GPT-2 folder through train.py -> sample.py -> export.py, plus a vocabulary too big for uint16.

    python -m pytest tests/test_gpt2_path.py -v

Real GPT-2 weights can't be downloaded here, so a test builds a 2-layer, 32-wide random
GPT2LMHeadModel with GPT-2's 50257-token vocabulary and saves it to a temp folder; that folder is
what `--init_from` points at. GPT-2 BPE needs tiktoken's files (TIKTOKEN_CACHE_DIR, tiktoken's
own cache, or a download; see conftest.py); the tests that need them skip when they are missing.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import smallgpt.dataloader  # noqa: E402
import smallgpt.prepare  # noqa: E402
from conftest import needs_gpt2_bpe, skip_without_gpt2_bpe  # noqa: E402

transformers = pytest.importorskip("transformers")
ENV = dict(os.environ, HF_HUB_OFFLINE="1",
           TRANSFORMERS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
TEXT = ("In a village of La Mancha, the name of which I have no desire to call to mind, "
        "there lived not long since one of those gentlemen that keep a lance in the lance-rack, "
        "an old buckler, a lean hack, and a greyhound for coursing. ") * 40


def run(*args, timeout=300):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64,
                                     vocab_size=50257)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory):
    skip_without_gpt2_bpe()
    folder = tmp_path_factory.mktemp("don") / "don"
    folder.mkdir()
    source = folder.parent / "text.txt"
    source.write_text(TEXT, encoding="utf-8")
    smallgpt.prepare.prepare_bpe(str(folder), url=None, argv=[f"--input={source}"])
    return str(folder)


def eval_losses(stdout):
    m = re.search(r"step \d+: train loss ([\d.]+), val loss ([\d.]+)", stdout)
    assert m, stdout
    return float(m.group(1)), float(m.group(2))


@needs_gpt2_bpe
def test_eval_through_train_matches_hugging_face(hf_dir, bpe_data, tmp_path):
    """train.py's loss at init_from=<HF folder> equals GPT2LMHeadModel's on the same batches."""
    out = run("train.py", "config/finetune_don.py", f"--init_from={hf_dir}", "--device=cpu",
              "--compile=False", "--dtype=float32", f"--dataset={bpe_data}",
              f"--out_dir={tmp_path / 'out'}", "--eval_only=True", "--eval_iters=3",
              "--batch_size=2", "--block_size=32")
    train_loss, val_loss = eval_losses(out)
    # the same windows, chosen the way train.py documents: spread evenly over each split
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    expected = []
    for split in ("train", "val"):
        path = os.path.join(bpe_data, f"{split}.bin")
        tokens = np.fromfile(path, dtype=np.uint16).astype(np.int64)
        starts = np.linspace(0, len(tokens) - 33, 3 * 2).astype(np.int64)
        losses = []
        for batch in (starts[0:2], starts[2:4], starts[4:6]):
            rows = torch.tensor(np.stack([tokens[i:i + 33] for i in batch]))
            with torch.no_grad():
                logits = hf(rows[:, :-1]).logits
            losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                            rows[:, 1:].flatten()).item())
        expected.append(sum(losses) / len(losses))
    assert train_loss == pytest.approx(expected[0], abs=2e-4)
    assert val_loss == pytest.approx(expected[1], abs=2e-4)


@needs_gpt2_bpe
def test_finetune_sample_export(hf_dir, bpe_data, tmp_path):
    """The issue's 'done when': finetune_don.py from a local HF folder on a CPU, sample, export."""
    out_dir = tmp_path / "out-don"
    out = run("train.py", "config/finetune_don.py", f"--init_from={hf_dir}", "--device=cpu",
              "--compile=False", f"--dataset={bpe_data}", f"--out_dir={out_dir}",
              "--max_iters=4", "--eval_interval=2", "--eval_iters=2",
              "--gradient_accumulation_steps=2", "--learning_rate=3e-3")
    # config block_size 1024 > the tiny model's 64 positions: trained at 64, said so
    assert "initializing from GPT-2 weights" in out
    assert (out_dir / "ckpt.pt").exists()
    ckpt = torch.load(out_dir / "ckpt.pt", weights_only=True)
    assert ckpt["model_args"]["vocab_size"] == 50257  # the pretrained vocabulary is kept
    assert ckpt["model_args"]["block_size"] == 64
    assert ckpt["model_args"]["gelu"] == "tanh"  # GPT-2's activation travels with the weights

    text = run("sample.py", f"--out_dir={out_dir}", "--device=cpu", "--num_samples=1",
               "--max_new_tokens=10", "--start=The knight", "--temperature=0")
    assert text.startswith("The knight") and len(text) > len("The knight")

    hf_out = tmp_path / "hf-don"
    run("export.py", f"--out_dir={out_dir}", f"--hf_dir={hf_out}")
    exported = transformers.GPT2LMHeadModel.from_pretrained(hf_out).eval()
    from model import GPT
    ours = GPT.from_checkpoint(ckpt).eval()
    idx = torch.randint(50257, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(exported(idx).logits, ours(idx, all_logits=True)[0],
                                   atol=1e-4, rtol=0)


def test_vocab_over_uint16_trains(tmp_path):
    """70,000 distinct symbols: prepared as uint32, and train.py reads and trains on it."""
    symbols = [chr(c) for c in range(0x4E00, 0x4E00 + 20000)] + \
              [chr(c) for c in range(0x10000, 0x10000 + 50000)]
    rng = np.random.default_rng(0)
    text = "".join(symbols) + "".join(rng.choice(symbols, 30000))
    source = tmp_path / "big.txt"
    source.write_text(text, encoding="utf-8")
    folder = tmp_path / "bigvocab"
    folder.mkdir()
    smallgpt.prepare.prepare_char(str(folder), url=None, argv=[f"--input={source}"])
    meta = smallgpt.dataloader.load_meta(str(folder))
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70000
    out = run("train.py", f"--dataset={folder}", f"--out_dir={tmp_path / 'out'}", "--device=cpu",
              "--compile=False", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16",
              "--batch_size=2", "--gradient_accumulation_steps=1", "--max_iters=3",
              "--eval_interval=3", "--eval_iters=1", "--warmup_iters=1")
    assert "step 3:" in out
    ckpt = torch.load(tmp_path / "out" / "last.pt", weights_only=True)
    assert ckpt["model_args"]["vocab_size"] == 70000
