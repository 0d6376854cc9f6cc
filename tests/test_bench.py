"""
bench.py runs and reports every field; the bf16 CPU path trains like fp32. CPU, ~30 s.

    python -m pytest tests/test_bench.py -v
"""

import os
import re
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def bench(*args):
    proc = subprocess.run([sys.executable, "bench.py", "--quick=True", "--device=cpu", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_quick_train_bench_prints_every_field():
    out = bench("--compare=--dtype=float32")
    for field in ("ms/iter", "tokens/s", "GFLOP/s", "MFU", "B/A time ratio"):
        assert field in out, out
    assert re.search(r"A: [\d.]+ ms/iter", out) and re.search(r"B: [\d.]+ ms/iter", out)


def test_quick_generate_bench_reports_cache_and_recompute():
    out = bench("--mode=generate")
    assert re.search(r"recompute \(nanoGPT\):\s+[\d.]+ tokens/s", out), out
    assert re.search(r"KV cache, exact:\s+[\d.]+ tokens/s", out), out


@pytest.mark.skipif(not __import__("runtime").cpu_has_fast_bf16(),
                    reason="this CPU has no bf16 matrix units: dtype=auto is fp32 here")
def test_bf16_cpu_training_tracks_fp32():
    """The same 150 steps in bf16 autocast and in fp32: both learn, and end close together."""
    from model import GPT, GPTConfig
    from runtime import autocast_context

    text = torch.tensor([ord(c) % 32 for c in "the quick brown fox jumps over the lazy dog " * 40])
    final = {}
    for dtype in ("bfloat16", "float32"):
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=32,
                              dropout=0.1))
        opt = model.configure_optimizers(0.1, 3e-3, (0.9, 0.99), "cpu")
        gen = torch.Generator().manual_seed(0)
        losses = []
        for _ in range(150):
            ix = torch.randint(len(text) - 33, (8,), generator=gen)
            x = torch.stack([text[i:i + 32] for i in ix])
            y = torch.stack([text[i + 1:i + 33] for i in ix])
            with autocast_context("cpu", dtype):
                _, loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        final[dtype] = sum(losses[-10:]) / 10
        assert final[dtype] < losses[0] - 1.5, (dtype, losses[0], final[dtype])
    assert abs(final["bfloat16"] - final["float32"]) < 0.1, final
