"""
bench.py runs and reports every field; the bf16 CPU path trains like fp32; the CPU speed-ups
(fast_cpu) keep the math. CPU, ~1 min.

    python -m pytest tests/test_bench.py -v
"""

import csv
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import run_train, train_args

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
    out = bench("--mode=generate", "--hf_generate=False")
    assert re.search(r"recompute \(nanoGPT\):\s+[\d.]+ tokens/s", out), out
    assert re.search(r"KV cache:\s+[\d.]+ tokens/s", out), out
    assert re.search(r"KV cache, window_chunk=8:\s+[\d.]+ tokens/s", out), out
    assert "greedy tokens equal to the full forward at 100.0% of 32 steps" in out, out


def test_generate_bench_of_a_variant_checks_tokens_and_compares_with_transformers():
    """A rope/GQA/window model past block_size: the cached tokens are checked against the
    banded forward, and inside block_size against transformers' generate on the export."""
    out = bench("--mode=generate", "--pos_emb=rope", "--n_kv_head=1", "--attn_window=8")
    assert "pos_emb='rope', n_kv_head=1, attn_window=8" in out, out
    assert "KV cache 64 bytes/token (2 KiB at block_size)" in out, out  # 8 slots x 2 x 32 x 4 B
    assert "greedy tokens equal to the banded full forward at 100.0% of 40 steps" in out, out
    assert re.search(r"transformers generate, inside block_size:\s+[\d.]+ tokens/s", out), out
    assert "greedy tokens identical: True" in out, out
    assert "window_chunk" not in out  # learned positions only


def test_generate_bench_of_a_linear_attention_model():
    """No KV cache but a fixed state: its size is printed (2 layers x 2 heads x (16 x 16 + 16)
    fp32 numbers), and the decoded tokens are checked against the full forward, no band."""
    out = bench("--mode=generate", "--attention=linear", "--pos_emb=none")
    assert "linear attention's state 4,352 bytes" in out, out
    assert "greedy tokens equal to the full forward at 100.0% of 40 steps" in out, out


def test_train_bench_takes_the_variant_settings():
    out = bench("--kv_share=2", "--n_kv_head=1", "--pos_emb=none", "--dtype=float32")
    assert "pos_emb='none', n_kv_head=1, kv_share=2" in out, out
    # 2 layers sharing one set of 1 kv head of 16 dims: 2 x 16 x 4 bytes per token
    assert "KV cache 128 bytes/token (4 KiB at block_size)" in out, out
    assert re.search(r"result: [\d.]+ ms/iter", out), out
    bad = subprocess.run([sys.executable, "bench.py", "--quick=True", "--n_kv_head=3"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == \
        ["error: n_kv_head=3 must divide n_head=2 (0 = n_head, 1 = multi-query)"], bad.stderr


@pytest.mark.cpu_bf16
def test_train_bench_with_dtype_auto_reports_what_this_cpu_runs():
    """dtype='auto' trains in bf16 where the CPU has bf16 units (or NANOGPT_CPU_BF16=1 says so)
    and in fp32 elsewhere; the KV cache it reports is in that dtype: 2 or 4 bytes a number."""
    from smallgpt.device import cpu_has_fast_bf16
    out = bench("--kv_share=2", "--n_kv_head=1", "--pos_emb=none")
    if cpu_has_fast_bf16():
        assert "cpu bfloat16" in out and "KV cache 64 bytes/token (2 KiB at block_size)" in out, out
    else:
        assert "cpu float32" in out and "KV cache 128 bytes/token (4 KiB at block_size)" in out, out


@pytest.mark.cpu_bf16
def test_the_bf16_switch_answers_the_cpu_check(monkeypatch):
    """NANOGPT_CPU_BF16=1 / 0 makes dtype='auto' pick bf16 / fp32 for CPU training on any CPU;
    generation stays fp32 either way; another value is one clear error."""
    from smallgpt.device import CPU_BF16_ENV, cpu_has_fast_bf16, pick_dtype
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert cpu_has_fast_bf16() and pick_dtype("auto", "cpu") == "bfloat16"
    assert pick_dtype("auto", "cpu", training=False, quiet=True) == "float32"
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert not cpu_has_fast_bf16() and pick_dtype("auto", "cpu", quiet=True) == "float32"
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="NANOGPT_CPU_BF16='yes': use 1"):
        cpu_has_fast_bf16()


@pytest.mark.cpu_bf16
@pytest.mark.skipif(not __import__("smallgpt.device").device.cpu_has_fast_bf16(),
                    reason="this CPU has no bf16 matrix units (NANOGPT_CPU_BF16=1 runs it anyway)")
def test_bf16_cpu_training_tracks_fp32():
    """The same 150 steps in bf16 autocast and in fp32: both learn, and end close together."""
    from model import GPT, GPTConfig
    from smallgpt.device import autocast_context

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


def gpt_and_batch(dropout=0.0):
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=48, vocab_size=50,
                          dropout=dropout))
    x = torch.randint(50, (3, 48), generator=torch.Generator().manual_seed(1))
    return model, x, torch.roll(x, -1, dims=1)


def loss_and_grads(model, x, y, dtype):
    from smallgpt.device import autocast_context
    model.zero_grad(set_to_none=True)
    with autocast_context("cpu", dtype):
        _, loss = model(x, y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_cpu_bf16_attention_path_is_as_accurate_as_torchs():
    """Under bf16 autocast, fast_cpu's batched-matmul attention and torch's fused kernel
    (fast_cpu=False) both land near the fp32 result: the loss and every gradient, with our error
    no more than about torch's own."""
    from model import set_fast_cpu
    model, x, y = gpt_and_batch()
    ref_loss, ref_grads = loss_and_grads(model, x, y, "float32")
    errors = {}
    for fast in (True, False):
        set_fast_cpu(model, fast)
        loss, grads = loss_and_grads(model, x, y, "bfloat16")
        rel = [((g - r).norm() / r.norm()).item() for g, r in zip(grads, ref_grads)]
        errors[fast] = (abs(loss - ref_loss).item(), max(rel))
    for fast, (loss_err, grad_err) in errors.items():
        assert loss_err < 0.02 and grad_err < 0.05, (fast, errors)
    assert errors[True][1] < 2 * errors[False][1] + 1e-3, errors


def test_fast_cpu_changes_no_number_in_float32(char_dataset, tmp_path):
    """fp32 and no dropout: fast_cpu (memory reuse, fused AdamW) against nanoGPT's path (torch's
    per-tensor AdamW) logs the same losses and evals, up to float rounding."""
    runs = {}
    for flag in ("True", "False"):
        out = tmp_path / flag
        result = run_train(char_dataset, out, "--max_iters=15", "--eval_interval=5",
                           "--dropout=0.0", f"--fast_cpu={flag}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        with open(out / "log.csv", newline="") as f:
            runs[flag] = list(csv.DictReader(f))
    assert len(runs["True"]) == len(runs["False"]) > 15
    for fast, plain in zip(runs["True"], runs["False"]):
        assert fast["iter"] == plain["iter"] and fast["kind"] == plain["kind"]
        for key in ("loss", "train_loss", "val_loss"):
            if fast[key]:
                assert float(fast[key]) == pytest.approx(float(plain[key]), abs=2e-4), (fast, plain)


def test_resume_takes_this_runs_adamw_not_the_checkpoints(char_dataset, tmp_path):
    """A checkpoint saved by fused AdamW, resumed with --fast_cpu=False, steps with torch's
    default AdamW (and the other way round): the saved optimizer state doesn't pin it."""
    out = tmp_path / "out"
    first = run_train(char_dataset, out, "--max_iters=4", "--eval_interval=4", cwd=tmp_path)
    assert first.returncode == 0, first.stderr

    def fused_flags():
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        return {bool(group.get("fused")) for group in state["optimizer"]["param_groups"]}

    assert fused_flags() == {True}
    for flag, max_iters, expected in (("False", 8, {False}), ("True", 12, {True})):
        result = run_train(char_dataset, out, "--init_from=resume",
                           "--resume_checkpoint_name=last.pt", f"--max_iters={max_iters}",
                           "--eval_interval=4", f"--fast_cpu={flag}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert fused_flags() == expected, flag


MALLINFO = """
import ctypes, sys
sys.path.insert(0, {repo!r})
import torch
from smallgpt import device
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
if {reuse}:
    assert device.reuse_freed_memory()
before = libc.mallinfo2().hblkhd
t = torch.empty({size}, dtype=torch.uint8)
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux's")
@pytest.mark.parametrize("size", [4 * 2**20, 64 * 2**20])  # below and above glibc's 32 MiB cap
def test_reuse_freed_memory_keeps_tensors_off_fresh_mmaps(size):
    """glibc maps a fresh region for a big tensor (and unmaps it when freed: page faults on
    every step); after reuse_freed_memory() the tensor comes from the reusable heap instead."""
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("not glibc >= 2.33 (no mallinfo2)")
    mapped = {}
    for reuse in (False, True):
        proc = subprocess.run([sys.executable, "-c", MALLINFO.format(repo=REPO, reuse=reuse, size=size)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        mapped[reuse] = int(proc.stdout.split()[-1])
    assert mapped[False] >= size and mapped[True] == 0, mapped


def test_kv_report_prints_every_column_for_every_row(char_dataset, tmp_path):
    """bench.py --mode=kv on two tiny runs trained here (learned positions and rope + GQA): one
    Markdown row per cache setting that applies to each model, every column a number, the full
    cache's Δloss 0, a quantised cache fewer bits than the full one, and the frontier PNG."""
    runs = {}
    for name, flags in (("learned", []), ("rope", ["--pos_emb=rope", "--n_kv_head=1"])):
        runs[name] = tmp_path / name
        result = run_train(char_dataset, runs[name], "--max_iters=2", "--eval_interval=2",
                           *flags, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    proc = subprocess.run([sys.executable, "bench.py", "--mode=kv", "--device=cpu",
                           f"--out_dir={runs['learned']}", f"--out_dir={runs['rope']}",
                           "--kv_sequences=1", "--kv_length=40", "--kv_budgets=8,16",
                           "--kv_windows=8", "--kv_sinks=2", f"--report_dir={tmp_path / 'report'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")][2:]
    number = r"[+-]?[\d,]+(\.\d+)?"
    table = {}
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 6 and all(re.fullmatch(number, c) for c in cells[2:]), line
        table[cells[0], cells[1]] = [float(c.replace(",", "")) for c in cells[2:]]
    settings = ["full cache", "kv_cache_dtype=int8", "kv_cache_dtype=fp8", "kv_cache_dtype=int4",
                "kv_budget=8", "kv_budget=16", "kv_budget=16, int4", "context_window=8"]
    assert sorted(table) == sorted([("learned", s) for s in settings] +
                                   [("rope", s) for s in settings + ["kv_sink=2"]]), sorted(table)
    for name in runs:
        full_bits, _, full_delta, _ = table[name, "full cache"]
        assert full_delta == 0
        assert table[name, "kv_cache_dtype=int8"][0] < full_bits / 3  # fp32 -> 8 bits + scales
        # 8 of 32 slots; each slot of a head (K and V: 2 x 16 fp32) also keeps its position
        # (int32) and score (fp32) for eviction: 136 bytes instead of 128
        assert table[name, "kv_budget=8"][0] == pytest.approx(full_bits / 4 * 136 / 128, rel=0.01)
    assert "quantisation error" in proc.stdout
    assert (tmp_path / "report" / "kv_frontier.png").stat().st_size > 10_000


def test_peak_flops_is_measured_once_per_machine(tmp_path, monkeypatch):
    """train.py's MFU denominator: the matmul benchmark runs on the first start only; the cached
    figure comes back after, a changed thread count measures again, and an unwritable cache
    folder just measures."""
    from smallgpt import device
    calls = []
    monkeypatch.setattr(device, "measure_peak_flops", lambda dev, dtype, size: calls.append(size) or 1e9 * (len(calls)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert device.cached_peak_flops("cpu", "float32", 64) == 1e9
    assert device.cached_peak_flops("cpu", "float32", 64) == 1e9 and calls == [64]
    assert (tmp_path / "smallgpt" / "peak_flops.json").is_file()
    assert device.peak_flops_cache() == str(tmp_path / "smallgpt" / "peak_flops.json")  # train.py names it
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert device.cached_peak_flops("cpu", "float32", 64) == 2e9
    finally:
        torch.set_num_threads(threads)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "smallgpt").write_text("a file where the folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "ro"))
    assert device.cached_peak_flops("cpu", "float32", 64) == 3e9


def test_eager_adamw_never_imports_dynamo_and_steps_like_torchs():
    """smallgpt.device.AdamW (train.py without compile) leaves torch._dynamo unimported (a second
    of start-up) and its steps, state_dict and load_state_dict equal torch.optim.AdamW's bit for
    bit, fused and not, in a fresh interpreter where a plain AdamW is also built first."""
    code = f"""
import sys
sys.path.insert(0, {REPO!r})
import torch
from smallgpt.device import AdamW

def run(cls, fused):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    groups = [{{"params": [p for p in model.parameters() if p.dim() == 2], "weight_decay": 0.1}},
              {{"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}}]
    opt = cls(groups, lr=1e-2, betas=(0.9, 0.95), fused=fused)
    for step in range(6):
        loss = model(torch.randn(5, 8)).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == 2:
            opt.load_state_dict(opt.state_dict())
    return [p.detach().clone() for p in model.parameters()]

ours = [run(AdamW, fused) for fused in (True, False)]
assert "torch._dynamo" not in sys.modules, "AdamW imported torch._dynamo"
theirs = [run(torch.optim.AdamW, fused) for fused in (True, False)]
assert all(torch.equal(a, b) for o, t in zip(ours, theirs) for a, b in zip(o, t))
again = run(AdamW, True)  # after a plain AdamW exists (its step now carries torch's wrappers)
assert all(torch.equal(a, b) for a, b in zip(again, theirs[0]))
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_a_train_py_run_without_compile_never_imports_dynamo(char_dataset, tmp_path):
    """The start-up promise end to end: train.py (compile=False, fused AdamW, evals, a saved
    checkpoint) runs in an interpreter that never imports torch._dynamo (about a second)."""
    args = ["train.py", *train_args(char_dataset, tmp_path / "out", "--max_iters=2",
                                    "--eval_interval=1", "--compile=False")]
    code = f"""
import runpy, sys
sys.argv = {args!r}
sys.path.insert(0, {REPO!r})
try:
    runpy.run_path({os.path.join(REPO, 'train.py')!r}, run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("dynamo imported:", "torch._dynamo" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "ckpt.pt").is_file()
    assert "dynamo imported: False" in proc.stdout, proc.stdout[-1000:]
