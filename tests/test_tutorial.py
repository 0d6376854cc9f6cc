"""
The transformer tutorial's checkpoints and data folders load here (smallgpt/tutorial.py).

The reference is the tutorial's model written again from its documented math (a nanoGPT GPT
with a 256-byte vocabulary, no position table, bias-free by default, and rotary embeddings from
the rotary_embedding_torch package over the whole head, neighbouring channels paired), trained a
few AdamW steps and saved the way its train.py saves: {model, optimizer, model_args without
block_size, config}. It uses rotary_embedding_torch itself (requirements-dev.txt), as the
tutorial does; without it these tests skip.

    python -m pytest tests/test_tutorial.py -q
"""

import json
import math

import pytest
import torch
import torch.nn as nn
from torch.nn import functional as F

from conftest import error_lines, run_script  # conftest puts the repo on sys.path
from model import GPT
from smallgpt.checkpoint import load_checkpoint

rotary_embedding_torch = pytest.importorskip("rotary_embedding_torch")

TEXT = ("In a village of La Mancha, the name of which I have no desire to call to mind, there "
        "lived not long since one of those gentlemen that keep a lance in the lance-rack. ") * 6
N_LAYER, N_HEAD, N_EMBD, BLOCK = 2, 2, 32, 32


class RefAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(N_EMBD, 3 * N_EMBD, bias=False)
        self.c_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)
        self.rotary_emb = rotary_embedding_torch.RotaryEmbedding(dim=N_EMBD // N_HEAD)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=2))
        q, k = self.rotary_emb.rotate_queries_with_cached_keys(q, k)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // N_HEAD)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = att.softmax(-1) @ v  # (B, nh, T, hd)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class RefBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(N_EMBD, bias=False)
        self.attn = RefAttention()
        self.ln_2 = nn.LayerNorm(N_EMBD, bias=False)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(N_EMBD, 4 * N_EMBD, bias=False),
                                      c_proj=nn.Linear(4 * N_EMBD, N_EMBD, bias=False)))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class RefGPT(nn.Module):
    """The tutorial's GPT: no position table and no length limit."""

    def __init__(self):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(256, N_EMBD), h=nn.ModuleList([RefBlock() for _ in range(N_LAYER)]),
            ln_f=nn.LayerNorm(N_EMBD, bias=False)))
        self.lm_head = nn.Linear(N_EMBD, 256, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx):
        x = self.transformer.wte(idx)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))

    @torch.no_grad()
    def greedy(self, idx, steps):
        for _ in range(steps):
            idx = torch.cat([idx, self(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
        return idx


def as_bytes(text):
    return torch.tensor(list(text.encode()), dtype=torch.long)


@pytest.fixture(scope="module")
def tutorial_run(tmp_path_factory):
    """(reference model, out_dir, data folder): 30 AdamW steps on TEXT as the tutorial trains,
    saved as its train.py saves (ckpt.pt and last.pt), and its data folder layout."""
    torch.manual_seed(0)
    ref = RefGPT()
    params = [p for p in ref.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.99))
    data = as_bytes(TEXT)
    for _ in range(30):
        starts = torch.randint(len(data) - BLOCK - 1, (8,))
        x = torch.stack([data[s:s + BLOCK] for s in starts])
        y = torch.stack([data[s + 1:s + BLOCK + 1] for s in starts])
        loss = F.cross_entropy(ref(x).view(-1, 256), y.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    ref.eval()
    out_dir = tmp_path_factory.mktemp("out-tutorial")
    saved = {"model": ref.state_dict(), "optimizer": opt.state_dict(),
             "model_args": dict(n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, bias=False, dropout=0.0),
             "config": dict(dataset="shakespeare_char", block_size=BLOCK, batch_size=8)}
    for name in ("ckpt.pt", "last.pt"):
        torch.save(saved, out_dir / name)
    data_dir = tmp_path_factory.mktemp("tutorial_data")
    n = int(len(TEXT) * 0.9)
    (data_dir / "train.txt").write_text(TEXT[:n])
    (data_dir / "val.txt").write_text(TEXT[n:])
    return ref, out_dir, data_dir


def test_reference_state_dict_is_the_tutorials(tutorial_run):
    """The reference saves what the tutorial's model saves: rotary tables in every layer."""
    ref, out_dir, _ = tutorial_run
    keys = torch.load(out_dir / "ckpt.pt", weights_only=True)["model"].keys()
    assert "transformer.h.0.attn.rotary_emb.freqs" in keys and "transformer.wpe.weight" not in keys


def test_same_logits_as_the_tutorials_model(tutorial_run):
    ref, out_dir, _ = tutorial_run
    ckpt = load_checkpoint(str(out_dir / "ckpt.pt"))
    assert ckpt["model_args"]["pos_emb"] == "rope" and ckpt["model_args"]["block_size"] == BLOCK
    assert ckpt["meta"]["tokenizer"] == "bytes"
    model = GPT.from_checkpoint(ckpt).eval()
    idx = as_bytes(TEXT[:2 * BLOCK]).view(2, BLOCK)
    with torch.no_grad():
        torch.testing.assert_close(model(idx, all_logits=True)[0], ref(idx), atol=1e-5, rtol=0)
        # past block_size the tutorial's model has no limit: ours through a cache that keeps all
        long = as_bytes(TEXT[:3 * BLOCK])[None]
        from smallgpt.kvcache import KVCache
        cache = KVCache.for_model(model.config, 1, 3 * BLOCK)
        torch.testing.assert_close(model(long, cache=cache, all_logits=True)[0], ref(long),
                                   atol=1e-5, rtol=0)


def test_sample_gives_the_tutorials_greedy_text(tutorial_run, tmp_path):
    """sample.py --out_dir=DIR at temperature 0: the reference's greedy bytes, within block_size
    and (context_window=-1: the whole history, as the tutorial samples) past it."""
    ref, out_dir, _ = tutorial_run
    prompt = "In a village "
    for steps, extra in ((BLOCK - len(prompt), []), (3 * BLOCK, ["--context_window=-1"])):
        want = ref.greedy(as_bytes(prompt)[None], steps)[0].tolist()
        done = run_script("sample.py", f"--out_dir={out_dir}", f"--start={prompt}", "--num_samples=1",
                          f"--max_new_tokens={steps}", "--temperature=0", "--device=cpu",
                          "--dtype=float32", "--stream=False", *extra, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "transformer tutorial" in done.stderr  # the note that says what was converted
        assert done.stdout.startswith(bytes(want).decode(errors="replace")), (done.stdout, want)


def test_eval_reads_the_tutorials_data_folder(tutorial_run, tmp_path):
    """eval.py on its data folder (train.txt / val.txt): bins written once; the loss is the
    reference's over windows of block_size side by side."""
    ref, out_dir, data_dir = tutorial_run
    done = run_script("eval.py", f"--out_dir={out_dir}", f"--dataset={data_dir}", "--json=True",
                      "--device=cpu", "--dtype=float32", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (data_dir / "val.bin").is_file()
    assert json.loads((data_dir / "meta.json").read_text())["tokenizer"] == "bytes"
    assert json.loads(done.stdout)["loss"] == pytest.approx(reference_loss(ref, data_dir), abs=1e-5)
    # its config's dataset is a folder of the tutorial's repo, never data/shakespeare_char here
    unnamed = run_script("eval.py", f"--out_dir={out_dir}", "--device=cpu", cwd=tmp_path)
    assert unnamed.returncode != 0 and "--dataset" in error_lines(unnamed.stderr)[-1]


def reference_loss(ref, data_dir):
    """The tutorial model's mean loss over val.txt in windows of block_size side by side."""
    val = as_bytes((data_dir / "val.txt").read_text())
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(val) - 1, BLOCK):
            x, y = val[start:start + BLOCK + 1][:-1], val[start + 1:start + BLOCK + 1]
            x = x[:len(y)]
            nll += F.cross_entropy(ref(x[None])[0], y, reduction="sum").item()
            count += len(y)
    return nll / count


def test_a_changed_text_file_writes_the_bins_again(tutorial_run, tmp_path):
    """The tutorial's scripts read val.txt: after it changes (same size, other bytes) eval.py
    scores the new text, not the .bin files written from the old one, and says so."""
    import shutil
    ref, out_dir, shared = tutorial_run
    data_dir = tmp_path / "data"
    shutil.copytree(shared, data_dir)
    args = [f"--out_dir={out_dir}", f"--dataset={data_dir}", "--json=True", "--device=cpu",
            "--dtype=float32"]
    assert run_script("eval.py", *args, cwd=tmp_path).returncode == 0
    old = (data_dir / "val.txt").read_text()
    (data_dir / "val.txt").write_text(old[::-1])  # the same bytes, reversed
    done = run_script("eval.py", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "val.txt changed since" in done.stderr
    assert json.loads(done.stdout)["loss"] == pytest.approx(reference_loss(ref, data_dir), abs=1e-5)
    again = run_script("eval.py", *args, cwd=tmp_path)  # nothing changed since: nothing written
    assert again.returncode == 0 and "changed since" not in again.stderr


def test_train_resumes_the_tutorials_checkpoint(tutorial_run, tmp_path):
    """train.py --init_from=resume continues it (on its own data folder, with its AdamW moments)
    and writes one of ours; workbench.load reads both."""
    import shutil
    _, out_dir, data_dir = tutorial_run
    run_dir = tmp_path / "run"
    shutil.copytree(out_dir, run_dir)
    done = run_script("train.py", "--init_from=resume", f"--out_dir={run_dir}", f"--dataset={data_dir}",
                      "--device=cpu", "--compile=False", "--dtype=float32", "--max_iters=3",
                      "--eval_interval=3", "--eval_iters=1", "--batch_size=2", "--log_interval=1",
                      "--peak_flops=1e12", "--warmup_iters=0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = torch.load(run_dir / "last.pt", weights_only=True)
    assert saved["iter_num"] == 3 and saved["model_args"]["pos_emb"] == "rope"
    assert "transformer.h.0.attn.rotary_emb.freqs" not in saved["model"]
    import workbench
    assert workbench.load(str(out_dir)).generate("In a", max_new_tokens=4, temperature=0)


def test_adam_moments_follow_the_rows(tutorial_run):
    """The converted optimizer's c_attn moments are reordered like the weights: the moment of
    each weight moves with it."""
    _, out_dir, _ = tutorial_run
    raw = torch.load(out_dir / "ckpt.pt", weights_only=True)
    ckpt = load_checkpoint(str(out_dir / "ckpt.pt"))
    w_raw = raw["model"]["transformer.h.0.attn.c_attn.weight"]
    w_new = ckpt["model"]["transformer.h.0.attn.c_attn.weight"]
    old_state, new_state = raw["optimizer"]["state"], ckpt["optimizer"]["state"]
    pairs = [(old_state[i]["exp_avg"], new_state[i]["exp_avg"])
             for i in old_state if old_state[i]["exp_avg"].shape == w_raw.shape]
    row = {tuple(r.tolist()): j for j, r in enumerate(w_raw)}
    order = [row[tuple(r.tolist())] for r in w_new]  # where each new row came from
    assert order != list(range(len(order)))
    assert any(torch.equal(new, old[order]) for old, new in pairs)


def test_predict_matches_forward():
    """model.predict (the GPT-2 re-implementation with Hydra configs' name): every position by
    default, the last one with targets=False; the same numbers as forward."""
    from model import GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)).eval()
    idx = torch.randint(50, (3, 16))
    with torch.no_grad():
        full, _ = model(idx, targets=idx)
    assert model.predict(idx).shape == (3, 16, 50)
    torch.testing.assert_close(model.predict(idx), full)
    torch.testing.assert_close(model.predict(idx, targets=False), full[:, -1:])


def test_export_takes_the_tutorials_checkpoint(tutorial_run, tmp_path):
    """export.py writes a Starcoder2 folder (rotary, bytes tokenizer) whose logits it checks."""
    pytest.importorskip("transformers")
    _, out_dir, _ = tutorial_run
    done = run_script("export.py", f"--out_dir={out_dir}", f"--hf_dir={tmp_path / 'hf'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "hf" / "model.safetensors").is_file() and "Starcoder2" in done.stdout
