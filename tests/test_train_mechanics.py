"""
train.py's mechanisms, each checked against a reference that does not run train.py's code:
the learning-rate schedule, gradient clipping and the weight-decay groups against a training
loop written here; gradient accumulation against one bigger batch; the evaluation against the
mean loss over windows picked here; SIGTERM and exact resume in bf16 (from a last.pt written
between evals, and from ckpt.pt) against an uninterrupted run; train.py's loss on a Hugging Face
GPT-2 against GPT2LMHeadModel's.

    python -m pytest tests/test_train_mechanics.py -q     # about a minute on 2 cores

Offline and without ../shared: every dataset is written here (a few hundred random tokens), and
the GPT-2 case uses a tiny random GPT2LMHeadModel and random token ids, so no tiktoken files.
Each reference is also shown to be sensitive: the mistake a test guards against (no clipping,
decay on every parameter, targets one token off, the erf GELU) moves the compared numbers by far
more than the tolerance.
"""

import csv
import json
import math
import shutil
import signal
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_train, script_env, start_script, train_args

import smallgpt.dataloader  # noqa: E402  (conftest put the repo on sys.path)
from model import GPT, GPTConfig  # noqa: E402

SEED = 1337  # train.py's default seed


# ----------------------------------------------------------------------------- helpers

def write_dataset(folder, train_ids, val_ids, vocab_size, dtype="uint16"):
    """A prepared dataset folder written by hand (numpy + json), as prepare.py would write it."""
    folder.mkdir(parents=True, exist_ok=True)
    np.asarray(train_ids, dtype=dtype).tofile(folder / "train.bin")
    np.asarray(val_ids, dtype=dtype).tofile(folder / "val.bin")
    chars = [chr(ord("A") + i) for i in range(vocab_size)]
    meta = {"version": 1, "tokenizer": "char", "vocab_size": vocab_size, "dtype": dtype,
            "chars": chars, "train_tokens": len(train_ids), "val_tokens": len(val_ids)}
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def log_rows(out_dir, kind):
    with open(out_dir / "log.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == kind]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def check_ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def max_weight_diff(state_a, state_b):
    assert state_a.keys() == state_b.keys()
    return max((state_a[k].float() - state_b[k].float()).abs().max().item() for k in state_a)


# ----------------------------------------------------------------------------- a step by hand

T, V, B, A = 16, 20, 2, 2  # block, vocabulary, batch, accumulation steps
MODEL_ARGS = dict(n_layer=2, n_head=2, n_embd=32, block_size=T, bias=False, vocab_size=V,
                  dropout=0.0)
LOOP = ["--block_size=16", "--batch_size=2", "--gradient_accumulation_steps=2", "--bias=False",
        "--dropout=0.0", "--learning_rate=1e-2", "--min_lr=1e-3", "--warmup_iters=2",
        "--lr_decay_iters=6", "--max_iters=8", "--weight_decay=0.5", "--grad_clip=1.0",
        "--eval_interval=1000", "--eval_iters=1"]
# The README's schedule at iterations 0..7: linear warmup over warmup_iters=2 (lr * (it+1)/3),
# the peak at it=2, a cosine from 1e-2 down to min_lr=1e-3 at lr_decay_iters=6 (half-way at
# it=4: 5.5e-3), then min_lr.
COS = math.cos(math.pi / 4)
SCHEDULE = [1e-2 / 3, 2e-2 / 3, 1e-2, 1e-3 + 9e-3 * (1 + COS) / 2, 5.5e-3,
            1e-3 + 9e-3 * (1 - COS) / 2, 1e-3, 1e-3]
FINAL_LR = 1e-3  # the rate set for iteration 8, saved in last.pt's optimizer


@pytest.fixture(scope="module")
def one_window_dataset(tmp_path_factory):
    """train.bin of exactly block_size + 1 tokens: the only window there is, so the batches a
    run draws are known without knowing how it draws them."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("one_window") / "data"
    return write_dataset(folder, rng.integers(0, V, T + 1), rng.integers(0, V, T + 1), V)


def reference_training(window, clip=True, decay="matrices"):
    """train.py's loop as the README describes it, written out: same initial weights (seed, then
    the model), AdamW with weight decay on the matrices only (chosen by name here), the mean
    loss over the accumulation steps, the gradient norm clipped to 1, the SCHEDULE.
    Returns (the loss of every step, the final state dict)."""
    torch.manual_seed(SEED)
    model = GPT(GPTConfig(**MODEL_ARGS))
    named = dict(model.named_parameters())
    is_matrix = {n: n.endswith(".weight") and "ln_" not in n for n in named}  # Linear, Embedding
    wants_decay = {"matrices": is_matrix, "all": dict.fromkeys(named, True),
                   "none": dict.fromkeys(named, False)}[decay]
    groups = [{"params": [p for n, p in named.items() if wants_decay[n]], "weight_decay": 0.5},
              {"params": [p for n, p in named.items() if not wants_decay[n]], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    x = torch.tensor(window[:-1], dtype=torch.long).repeat(B, 1)  # (B, T)
    y = torch.tensor(window[1:], dtype=torch.long).repeat(B, 1)   # the next token of each
    losses = []
    for lr in SCHEDULE:
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = 0.0
        for _ in range(A):
            logits, _ = model(x, all_logits=True)
            loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
            (loss / A).backward()
            step_loss += loss.item() / A
        if clip:
            norm = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in named.values()))
            for p in named.values():
                p.grad.mul_(min(1.0, 1.0 / (norm + 1e-6)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
    return losses, model.state_dict()


def test_training_steps_match_a_hand_written_loop(one_window_dataset, tmp_path):
    """8 steps of train.py == 8 steps of reference_training: every logged loss and learning
    rate, the final weights and the learning rate in the saved optimizer."""
    out_dir = tmp_path / "out"
    check_ok(run_train(one_window_dataset, out_dir, *LOOP, cwd=tmp_path))
    window = np.fromfile(one_window_dataset / "train.bin", dtype=np.uint16).astype(np.int64)
    ckpt = load(out_dir / "last.pt")
    assert ckpt["model_args"] == MODEL_ARGS
    expected_losses, expected_state = reference_training(window)

    rows = log_rows(out_dir, "train")
    assert [int(r["iter"]) for r in rows] == list(range(1, 9))
    # the row of iteration i describes the step from i-1 to i, taken at SCHEDULE[i-1]
    assert [float(r["lr"]) for r in rows] == pytest.approx(SCHEDULE, rel=1e-6)
    assert [float(r["loss"]) for r in rows] == pytest.approx(expected_losses, rel=1e-6)
    assert ckpt["iter_num"] == 8
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == pytest.approx([FINAL_LR] * 2)
    tolerance = 2e-6  # measured: 2e-7 (fused AdamW here, torch's for-loop AdamW there)
    assert max_weight_diff(ckpt["model"], expected_state) < tolerance

    # the reference is sensitive to what it checks: without clipping, or with weight decay on
    # every parameter or on none, the weights land far outside the tolerance
    for variant in (dict(clip=False), dict(decay="all"), dict(decay="none")):
        _, other = reference_training(window, **variant)
        assert max_weight_diff(other, expected_state) > 100 * tolerance, variant


# ----------------------------------------------------------------------------- accumulation

def test_gradient_accumulation_equals_one_bigger_batch(char_dataset, tmp_path):
    """batch 4 x 2 accumulation steps trains exactly like batch 8 x 1: the same logged losses,
    evals and weights (up to float rounding). The 8 windows are the same in both: the first
    micro-batch draws 4, the second the next 4 from the same generator."""
    path = str(char_dataset / "train.bin")
    big = smallgpt.dataloader.sample_batch(path, "uint16", 8, 32, torch.Generator().manual_seed(SEED))
    g = torch.Generator().manual_seed(SEED)
    halves = [smallgpt.dataloader.sample_batch(path, "uint16", 4, 32, g) for _ in range(2)]
    for whole, first, second in zip(big, *halves):
        assert torch.equal(whole, torch.cat([first, second])), \
            "4 + 4 draws no longer give the 8 windows of one draw: this test needs another setup"
    common = ["--max_iters=6", "--eval_interval=6", "--dropout=0.0"]
    one = tmp_path / "one"
    two = tmp_path / "two"
    # eval_iters * batch_size = 16 windows in both, so the evals see the same windows too
    check_ok(run_train(char_dataset, one, *common, "--batch_size=8",
                       "--gradient_accumulation_steps=1", "--eval_iters=2", cwd=tmp_path))
    check_ok(run_train(char_dataset, two, *common, "--batch_size=4",
                       "--gradient_accumulation_steps=2", "--eval_iters=4", cwd=tmp_path))
    losses = {run: [float(r["loss"]) for r in log_rows(run, "train")] for run in (one, two)}
    assert len(losses[one]) == 6
    assert losses[two] == pytest.approx(losses[one], rel=1e-6)
    for a, b in zip(log_rows(one, "eval"), log_rows(two, "eval")):
        assert float(b["val_loss"]) == pytest.approx(float(a["val_loss"]), rel=1e-6)
    # measured: 1e-6 (sums in another order)
    assert max_weight_diff(load(one / "last.pt")["model"], load(two / "last.pt")["model"]) < 1e-5


# ----------------------------------------------------------------------------- evaluation

def structured_tokens(n, rng, perm):
    """Mostly (9 in 10) a fixed successor (perm[t] follows t), else a random token: a model learns
    the successor in a few steps, and windows at different offsets differ."""
    ids = [int(rng.integers(V_EVAL))]
    for _ in range(n - 1):
        ids.append(int(perm[ids[-1]]) if rng.random() < 0.9 else int(rng.integers(V_EVAL)))
    return ids


V_EVAL, T_EVAL, N_WINDOWS = 30, 32, 8  # eval_iters=2 x batch_size=4 windows per split


def test_eval_loss_is_the_mean_over_evenly_spread_windows(tmp_path):
    """A uint32 dataset (meta.json says so) trained for 20 steps; the logged eval at step 20
    equals the mean cross-entropy of the final weights over N_WINDOWS windows per split, the
    first at token 0 and the last ending at the split's last token, evenly spaced (the split
    sizes are chosen so the spacing is a whole number), with the next tokens as targets."""
    rng = np.random.default_rng(1)
    perm = rng.permutation(V_EVAL)
    step = {"train": 300, "val": 40}  # window spacing; n = T + 1 + (N_WINDOWS - 1) * step
    tokens = {s: structured_tokens(T_EVAL + 1 + (N_WINDOWS - 1) * step[s], rng, perm)
              for s in step}
    data = write_dataset(tmp_path / "data", tokens["train"], tokens["val"], V_EVAL, dtype="uint32")
    out_dir = tmp_path / "out"
    check_ok(run_train(data, out_dir, "--max_iters=20", "--eval_interval=20",
                       "--learning_rate=3e-2", cwd=tmp_path))
    ckpt = load(out_dir / "last.pt")
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    model.eval()

    def mean_loss(split, shift=1, first_windows=N_WINDOWS):
        ids = torch.tensor(tokens[split])
        losses = []
        for k in range(0, first_windows, 4):  # batches of 4 windows, as batch_size=4
            starts = [j * step[split] for j in range(k, min(k + 4, first_windows))]
            x = torch.stack([ids[s:s + T_EVAL] for s in starts])
            y = torch.stack([ids[s + shift:s + shift + T_EVAL] for s in starts])
            with torch.no_grad():
                logits, _ = model(x, all_logits=True)
            losses.append(F.cross_entropy(logits.reshape(-1, V_EVAL), y.reshape(-1)).item())
        return sum(losses) / len(losses)

    last_eval = log_rows(out_dir, "eval")[-1]
    assert int(last_eval["iter"]) == 20
    assert float(last_eval["train_loss"]) == pytest.approx(mean_loss("train"), rel=2e-6)
    assert float(last_eval["val_loss"]) == pytest.approx(mean_loss("val"), rel=2e-6)
    # the model did learn the successor: with targets one token further (first 4 windows: the
    # last one has no token after its end) the loss is far outside the tolerance
    assert mean_loss("val", shift=2, first_windows=4) > mean_loss("val", first_windows=4) + 1.0


# ----------------------------------------------------------------------------- SIGTERM and resume

RESUME = ["--dtype=bfloat16", "--dropout=0.1", "--gradient_accumulation_steps=2",
          "--warmup_iters=2", "--lr_decay_iters=10", "--min_lr=1e-3", "--eval_interval=2"]
M = 12  # iterations of the uninterrupted run


def stop_with_sigterm(dataset, out_dir, cwd):
    """Start a long bf16 run, send SIGTERM once iteration 3 is printed (after the eval and
    ckpt.pt of iteration 2); return (exit code, output). The run is paused while the signal is
    sent, so it stops within a step or two."""
    log = cwd / "stopped.log"
    args = train_args(dataset, out_dir, *RESUME, "--max_iters=100000")
    proc = start_script("train.py", *args, cwd=cwd, stdout_path=log)
    try:
        deadline = time.time() + 120
        while "iter 3:" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.005)
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    return code, log.read_text()


def test_sigterm_stops_like_ctrl_c_and_bf16_resume_is_exact(char_dataset, tmp_path):
    """SIGTERM (a scheduler's stop) finishes the step, writes last.pt and exits 130. Resuming
    in bf16, with dropout and accumulation, from that last.pt (written between evals) and from
    the run's ckpt.pt (written at an eval) gives exactly the losses, evals and weights of an
    uninterrupted bf16 run."""
    straight = tmp_path / "straight"
    check_ok(run_train(char_dataset, straight, *RESUME, f"--max_iters={M}", cwd=tmp_path))
    reference = {kind: {r["iter"]: r for r in log_rows(straight, kind)}
                 for kind in ("train", "eval")}
    reference_weights = load(straight / "last.pt")["model"]

    def assert_continues_exactly(out_dir, start):
        for kind, keys in (("train", ("loss", "lr")), ("eval", ("train_loss", "val_loss"))):
            rows = [r for r in log_rows(out_dir, kind) if int(r["iter"]) > start]
            assert [r["iter"] for r in rows] == [i for i in reference[kind] if int(i) > start]
            for r in rows:
                assert [r[k] for k in keys] == [reference[kind][r["iter"]][k] for k in keys], r
        resumed = load(out_dir / "last.pt")["model"]
        assert all(torch.equal(resumed[n], reference_weights[n]) for n in reference_weights)

    stopped = tmp_path / "stopped"
    code, output = stop_with_sigterm(char_dataset, stopped, tmp_path)
    assert code == 130, output
    assert "Traceback" not in output
    k = load(stopped / "last.pt")["iter_num"]
    c = load(stopped / "ckpt.pt")["iter_num"]
    assert f"stopped at iteration {k}. To resume:" in output
    assert 2 <= c < k <= M - 4, f"ckpt.pt at {c}, last.pt at {k}: too late for a {M}-step run"
    from_ckpt = tmp_path / "from_ckpt"
    shutil.copytree(stopped, from_ckpt)

    for out_dir, name, start in ((stopped, "last.pt", k), (from_ckpt, "ckpt.pt", c)):
        result = check_ok(run_train(char_dataset, out_dir, *RESUME, "--init_from=resume",
                                    f"--resume_checkpoint_name={name}", f"--max_iters={M}",
                                    cwd=tmp_path))
        assert f"resuming from {out_dir / name} at iteration {start}" in result.stdout
        assert_continues_exactly(out_dir, start)


# ----------------------------------------------------------------------------- GPT-2 weights

def gelu_sensitive_windows(tanh_model, erf_model, n_windows, spacing, rng):
    """Token ids with n_windows windows of T_HF + 1 tokens at multiples of `spacing` (random
    tokens between them). In each window, after a random first token, every next token is the
    one the tanh-GELU model favours most over the erf-GELU one, so the loss over these windows
    moves with the GELU flavour (on random tokens the two losses differ by ~1e-6 relative)."""
    ids = rng.integers(0, V_HF, T_HF + 1 + (n_windows - 1) * spacing)
    starts = [k * spacing for k in range(n_windows)]
    for j in range(T_HF):
        context = torch.tensor(np.stack([ids[s:s + j + 1] for s in starts]).astype(np.int64))
        with torch.no_grad():
            favoured = (tanh_model(context)[0][:, -1] - erf_model(context)[0][:, -1]).argmax(-1)
        for s, token in zip(starts, favoured.tolist()):
            ids[s + j + 1] = token
    return ids


V_HF, T_HF, HF_BATCH, HF_EVAL_ITERS, SPACING = 1000, 32, 2, 3, 40


def test_train_loss_on_gpt2_weights_equals_gpt2lmheadmodels(tmp_path):
    """train.py --init_from=<a Hugging Face GPT-2 folder> evaluates the loss GPT2LMHeadModel
    gives on the same windows, and the checkpoint it writes holds a model with HF's logits.
    The weights are scaled up (std 0.2, not 0.02; LayerNorms and biases random too) and the
    windows chosen so that the GELU flavour matters: the erf GELU moves the loss by more than
    100 times the tolerance, and the logits by more than 100 times theirs."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64,
                                     vocab_size=V_HF, bos_token_id=None, eos_token_id=None,
                                     initializer_range=0.2)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(0.2 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    hf_erf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        **{**config.to_dict(), "activation_function": "gelu"})).eval()
    hf_erf.load_state_dict(hf.state_dict())

    # the windows are built with model.py (fast) from HF's weights, then scored by HF
    ours_tanh = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=64, vocab_size=V_HF,
                              gelu="tanh")).eval()
    ours_tanh.load_state_dict(hf_state_dict_as_ours(hf))
    ours_erf = GPT(GPTConfig(**{**ours_tanh.config.__dict__, "gelu": "exact"})).eval()
    ours_erf.load_state_dict(ours_tanh.state_dict())
    rng = np.random.default_rng(2)
    n_windows = HF_BATCH * HF_EVAL_ITERS
    ids = {s: gelu_sensitive_windows(ours_tanh, ours_erf, n_windows, SPACING, rng)
           for s in ("train", "val")}
    data = tmp_path / "data"  # no meta.json: GPT-2 token ids, as nanoGPT's openwebtext
    data.mkdir()
    for s in ids:
        ids[s].astype(np.uint16).tofile(data / f"{s}.bin")
    out_dir = tmp_path / "out"
    # learning_rate 0: the weights stay HF's, so the checkpoint at step 1 must still be HF's model
    check_ok(run_train(data, out_dir, f"--init_from={tmp_path / 'hf'}", f"--block_size={T_HF}",
                       f"--batch_size={HF_BATCH}", f"--eval_iters={HF_EVAL_ITERS}",
                       "--max_iters=1", "--learning_rate=0", "--decay_lr=False",
                       "--eval_interval=1", cwd=tmp_path,
                       env=script_env(HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1)))

    def hf_loss(model, split):
        """Mean over eval_iters batches of the mean cross-entropy, as the README describes."""
        rows = np.stack([ids[split][k * SPACING:k * SPACING + T_HF + 1] for k in range(n_windows)])
        rows = torch.tensor(rows.astype(np.int64))
        with torch.no_grad():
            logits = model(rows[:, :-1]).logits
        per_batch = [F.cross_entropy(logits[i:i + HF_BATCH].reshape(-1, V_HF),
                                     rows[i:i + HF_BATCH, 1:].reshape(-1)).item()
                     for i in range(0, n_windows, HF_BATCH)]
        return sum(per_batch) / len(per_batch)

    first_eval = log_rows(out_dir, "eval")[0]
    loss_tolerance = 5e-7  # relative; log.csv keeps 7 significant digits
    for split in ("train", "val"):
        expected = hf_loss(hf, split)
        print(f"{split}: train.py {first_eval[split + '_loss']}, GPT2LMHeadModel {expected:.7g}, "
              f"with the erf GELU {hf_loss(hf_erf, split):.7g}")
        assert float(first_eval[f"{split}_loss"]) == pytest.approx(expected, rel=loss_tolerance)
        assert abs(hf_loss(hf_erf, split) - expected) > 100 * loss_tolerance * expected

    # the checkpoint keeps GPT-2's tanh GELU: rebuilt from it, the model gives HF's logits
    ckpt = load(out_dir / "last.pt")
    assert ckpt["iter_num"] == 1
    model = GPT(GPTConfig(**ckpt["model_args"])).eval()
    model.load_state_dict(ckpt["model"])
    x = torch.tensor(ids["val"][:T_HF].astype(np.int64))[None]
    with torch.no_grad():
        theirs, erf = hf(x).logits, hf_erf(x).logits
        diff = (model(x, all_logits=True)[0] - theirs).abs().max().item()
    logit_tolerance = 5e-6  # test_hf.py's TOL, the README's figure for HF parity
    print(f"logits from the checkpoint vs GPT2LMHeadModel: max abs difference {diff:.2e}")
    assert diff < logit_tolerance
    assert (erf - theirs).abs().max().item() > 100 * logit_tolerance


def hf_state_dict_as_ours(hf):
    """HF GPT-2's weights under model.py's names: Conv1D weights are (in, out), transposed."""
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    state = {}
    for name, value in hf.state_dict().items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of older transformers
        state[name] = value.t() if name.endswith(conv1d) else value
    return state
