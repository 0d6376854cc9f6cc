"""
Memory beyond the window (issue #12): sequential batches, TransformerXL's memory, linear attention.

Each mechanism against a reference that does not run the code under test:
- sequential batches: the next step's first input token is the last target token of the same
  row one step before (read from the .bin, not from the formula), and a resumed run with an XL
  memory gives exactly the losses and weights of an uninterrupted one;
- XL: a segment seen after a memory of the previous segment(s) gets the logits of the same
  tokens in one causal forward over all of them, and a memory of size 0 is the plain forward;
- linear attention: the chunked training form against a quadratic reference written here, and
  the decoder's recurrent state (kvcache.LinearState) against a full forward, within 1e-5 (fp32).

    python -m pytest tests/test_memory.py -q     # about 45 s on 2 cores (the XL resume test: 25 s)

Offline: the datasets are conftest's generated text; the models are tiny and random.
"""

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import error_lines, run_script, run_train  # noqa: E402
import smallgpt.dataloader  # noqa: E402
from smallgpt.kvcache import LinearState, XLMemory  # noqa: E402
from smallgpt.generate import _left_pad  # noqa: E402
from smallgpt.linear_attention import causal_linear_attention, feature_map, linear_attention_step  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

V = 23  # vocabulary of the model tests


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=V, bias=False)
    args.update(kw)
    return GPT(GPTConfig(**args)).eval()


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- sequential batches

def test_sequential_rows_continue_where_they_stopped_and_wrap(char_dataset):
    """Row b of step t+1 starts with the token row b of step t ended on (its last target), for
    every step up to the wrap; rows never read each other's text; at the wrap each row starts
    its stretch over, and says so."""
    path = str(char_dataset / "train.bin")
    n = smallgpt.dataloader.count_tokens(path, "uint16")
    rows, T = 5, 32
    windows = (n // rows - 1) // T  # whole windows of T + 1 tokens in a row's stretch
    previous = None
    for step in range(windows + 1):
        starts, wrapped = smallgpt.dataloader.sequential_starts(n, rows, T, step)
        x, y = smallgpt.dataloader.sample_batch(path, "uint16", rows, T, offsets=starts)
        assert wrapped == (step in (0, windows)), step
        if 0 < step < windows:
            assert torch.equal(x[:, 0], previous[:, -1]), step  # the text runs on, row by row
            assert starts == [s + T for s in previous_starts]
        assert all(g * (n // rows) <= s and s + T < (g + 1) * (n // rows) + 1
                   for g, s in enumerate(starts)), (step, starts)  # inside row g's stretch
        previous, previous_starts = y, starts
    assert starts == smallgpt.dataloader.sequential_starts(n, rows, T, 0)[0]  # step `windows` is step 0 again
    with pytest.raises(ValueError, match="smaller batch_size"):
        smallgpt.dataloader.sequential_starts(100, 4, 32, 0)


XL_RUN = ["--data_order=sequential", "--pos_emb=rope", "--xl_memory=48", "--eval_interval=1000",
          "--gradient_accumulation_steps=2", "--checkpoint_interval=3"]


def test_xl_training_resumes_exactly(char_dataset, tmp_path):
    """Sequential batches with an XL memory, stopped after 3 of 6 steps and resumed from last.pt:
    the same training losses and final weights as 6 steps at once (the batch stream is a
    function of the step; the memory is saved in the checkpoint). Resuming with the memory
    dropped from the checkpoint gives other losses, so the saved memory is what makes it exact."""
    import csv

    def losses(out_dir):
        with open(out_dir / "log.csv", newline="") as f:
            return {r["iter"]: r["loss"] for r in csv.DictReader(f) if r["kind"] == "train"}

    straight, resumed, forgetful = (tmp_path / n for n in ("straight", "resumed", "forgetful"))
    for out_dir, steps in ((straight, 6), (resumed, 3)):
        result = run_train(char_dataset, out_dir, *XL_RUN, f"--max_iters={steps}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = load(resumed / "last.pt")
    assert checkpoint["rng"][0]["xl_memory"][0]["length"] == 48
    forgetful.mkdir()
    for state in checkpoint["rng"]:
        state["xl_memory"] = []
    torch.save(checkpoint, forgetful / "last.pt")
    for out_dir in (resumed, forgetful):
        result = run_train(char_dataset, out_dir, *XL_RUN, "--max_iters=6", "--init_from=resume",
                           "--resume_checkpoint_name=last.pt", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    expected, weights = losses(straight), load(straight / "last.pt")["model"]
    assert losses(resumed) == expected
    assert all(torch.equal(t, weights[k]) for k, t in load(resumed / "last.pt")["model"].items())
    later = {k: v for k, v in losses(forgetful).items() if int(k) > 3}
    assert later and all(v != expected[k] for k, v in later.items())
    assert "training continues from an empty memory" in result.stderr

    # sample.py decodes an XL-trained model with the context it trained on: block_size (32)
    # + xl_memory (48) tokens back, as if --context_window=80 were given
    common = [f"--out_dir={straight}", "--checkpoint_name=last.pt", "--device=cpu",
              "--max_new_tokens=120", "--num_samples=1", "--temperature=0.8", "--seed=3"]
    default = run_script("sample.py", *common, cwd=tmp_path)
    explicit = run_script("sample.py", *common, "--context_window=80", cwd=tmp_path)
    assert default.returncode == 0 and explicit.returncode == 0, default.stderr + explicit.stderr
    assert "context_window=80 (block_size + xl_memory)" in default.stderr
    assert default.stdout == explicit.stdout


@pytest.mark.parametrize("args, message", [
    (["--xl_memory=8"], "needs --data_order=sequential"),
    (["--xl_memory=8", "--data_order=sequential"], "pos_emb='learned'"),
    (["--attention=linear", "--pos_emb=rope"], "not 'rope'"),
])
def test_memory_settings_mistakes_are_one_line(char_dataset, tmp_path, args, message):
    result = run_train(char_dataset, tmp_path / "out", *args, "--max_iters=1", cwd=tmp_path)
    lines = error_lines(result.stderr)
    assert result.returncode != 0 and len(lines) == 1 and message in lines[0], result.stderr


# ----------------------------------------------------------------------------- TransformerXL

@pytest.mark.parametrize("pos_emb", ["rope", "none"])
@pytest.mark.parametrize("segments", [2, 3])
def test_xl_segment_equals_one_causal_forward_over_all_segments(pos_emb, segments):
    """A memory of every earlier segment (xl_memory = (segments - 1) * T, from a reset): each
    segment gets the logits of its tokens in one causal forward over all segments together.
    Gradients stop at the memory: it holds no graph, and the last segment's gradients differ
    from those of the joint forward, which also flow into the earlier segments' keys."""
    T = 8
    model = tiny(pos_emb=pos_emb, block_size=segments * T).train()  # dropout 0: train = eval
    idx = torch.randint(V, (3, segments * T), generator=torch.Generator().manual_seed(1))
    joint, _ = model(idx, all_logits=True)
    memory = XLMemory((segments - 1) * T)
    for s in range(segments):
        segment = idx[:, s * T:(s + 1) * T].contiguous()
        logits, loss = model(segment, segment, memory=memory)
        assert_close(logits, joint[:, s * T:(s + 1) * T])
    assert memory.length == (segments - 1) * T
    assert all(not t.requires_grad for t in [*memory.k.values(), *memory.v.values()])
    loss.backward()
    xl_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    last = slice((segments - 1) * T, None)
    F.cross_entropy(joint[:, last].reshape(-1, V), idx[:, last].reshape(-1)).backward()
    assert any(not torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(xl_grads, model.parameters()))


def test_xl_memory_zero_is_the_plain_forward():
    """xl_memory = 0: consecutive segments get exactly the logits and loss of plain forwards."""
    model = tiny(pos_emb="rope")
    idx = torch.randint(V, (2, 48), generator=torch.Generator().manual_seed(2))
    memory = XLMemory(0)
    for s in range(3):
        seg = idx[:, 16 * s:16 * (s + 1)].contiguous()
        assert all(torch.equal(a, b) for a, b in zip(model(seg, seg, memory=memory), model(seg, seg)))
    assert memory.length == 0 and all(t.size(2) == 0 for t in memory.k.values())


def test_xl_memory_reset_forgets():
    """After reset() a segment is computed as if nothing came before it."""
    model = tiny(pos_emb="none")
    a, b = torch.randint(V, (2, 2, 16), generator=torch.Generator().manual_seed(3))
    memory = XLMemory(16)
    model(a, memory=memory)
    remembered, _ = model(b, memory=memory, all_logits=True)
    memory.reset()
    fresh, _ = model(b, memory=memory, all_logits=True)
    assert torch.equal(fresh, model(b, all_logits=True)[0])
    assert not torch.allclose(remembered, fresh)


def test_xl_memory_needs_relative_positions():
    with pytest.raises(ValueError, match="pos_emb='rope' or 'none'"):
        tiny()(torch.zeros(1, 4, dtype=torch.long), memory=XLMemory(4))


# ----------------------------------------------------------------------------- linear attention

def quadratic_linear_attention(q, k, v):
    """The definition, written out: scores phi(q_i).phi(k_j) for j <= i, each row divided by its
    sum, times v. T x T, no chunks, no running state."""
    q, k = feature_map(q), feature_map(k)
    scores = (q @ k.transpose(-1, -2)).tril()  # (B, H, T, T), positive on and below the diagonal
    return (scores / scores.sum(-1, keepdim=True)) @ v


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_form_equals_the_definition_and_the_recurrent_steps(chunk):
    """causal_linear_attention, whatever the chunk size (one that does not divide T too), and
    linear_attention_step token by token, both equal the quadratic definition."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, 37, 8, generator=g) for _ in range(3))
    expected = quadratic_linear_attention(q, k, v)
    y, (S, z) = causal_linear_attention(feature_map(q), feature_map(k), v, chunk=chunk)
    assert_close(y, expected, atol=1e-5, rtol=1e-5)
    S_step, z_step = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8)
    steps = [linear_attention_step(feature_map(q[:, :, [t]]), feature_map(k[:, :, [t]]),
                                   v[:, :, [t]], S_step, z_step) for t in range(37)]
    assert_close(torch.cat(steps, dim=2), expected, atol=1e-5, rtol=1e-5)
    assert_close(S, S_step, atol=1e-4, rtol=1e-5)  # the final states agree too
    assert_close(z, z_step, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("pos_emb", ["none", "learned"])
def test_linear_model_decoding_equals_the_full_forward(pos_emb):
    """A 3-layer linear-attention model: a prefill then one token at a time through the
    decoder's LinearState (the recurrent form) gives the logits of one full forward, 1e-5."""
    block = 16 if pos_emb == "none" else 64
    model = tiny(attention="linear", pos_emb=pos_emb, block_size=block, n_kv_head=1)
    idx = torch.randint(V, (2, 48), generator=torch.Generator().manual_seed(5))
    full, _ = model(idx, all_logits=True)  # pos_emb='none': three block_sizes long, no limit
    state = LinearState.for_model(model.config, 2)
    with torch.no_grad():
        steps = [model(idx[:, :7], cache=state, all_logits=True)[0]]
        steps += [model(idx[:, [t]], cache=state, all_logits=True)[0] for t in range(7, 48)]
    assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_linear_generation_has_no_length_limit_and_constant_memory():
    """Generating 3 block_sizes past the prompt: the cached tokens equal the no-cache reference
    (a full forward per token), ragged prompts included (and a left-padded row's logits are its
    own, alone, within 1e-5), and the state's bytes are those of
    n_layer x batch x n_head x (hd x hd + hd) fp32 numbers after every step."""
    model = tiny(attention="linear", pos_emb="none")
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    kw = dict(max_new_tokens=48, temperature=0)
    cached = torch.stack(list(model.generate_stream(prompts, **kw)), dim=1)
    reference = torch.stack(list(model.generate_stream(prompts, use_cache=False, **kw)), dim=1)
    assert torch.equal(cached, reference)
    # the ragged batch's logits themselves: pad slots must add nothing to a row's state
    idx, pad = _left_pad(prompts, "cpu")
    state = LinearState.for_model(model.config, 2)
    state.reset(pad)
    with torch.no_grad():
        batched = [model(idx, cache=state)[0]] + [model(cached[:, [t]], cache=state)[0] for t in range(5)]
        for b, row in enumerate(prompts):
            alone = torch.tensor([row + cached[b, :5].tolist()])
            expected = model(alone, all_logits=True)[0][0, len(row) - 1:]  # (6, V)
            assert_close(torch.cat(batched, dim=1)[b], expected, atol=1e-5, rtol=1e-5)
    L, B, H, d = 3, 2, 2, 16
    state = LinearState.for_model(model.config, B)
    seq = torch.randint(V, (B, 1))
    sizes = set()
    with torch.no_grad():
        for _ in range(48):
            model(seq, cache=state)
            held = sum(t.numel() * t.element_size() for t in state.S + state.z)
            sizes.add((held, state.nbytes()))
    assert sizes == {(L * B * H * (d * d + d) * 4,) * 2}


def test_linear_attention_trains(char_dataset, tmp_path):
    """60 steps of a linear-attention model on the generated text: the final val loss is below
    the unigram entropy of the text, which no model that ignores the context can beat."""
    ids = np.fromfile(char_dataset / "train.bin", dtype=np.uint16)
    p = np.bincount(ids) / len(ids)
    unigram = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    result = run_train(char_dataset, tmp_path / "out", "--attention=linear", "--pos_emb=none",
                       "--max_iters=60", "--eval_interval=60", "--eval_iters=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    last = [line for line in result.stdout.splitlines() if line.startswith("step 60:")][0]
    val = float(last.split("val loss ")[1].split(",")[0])
    assert val < unigram - 0.3, (val, unigram)


@pytest.mark.parametrize("kw, message", [
    (dict(pos_emb="rope"), "not 'rope'"),
    (dict(attn_window=4), "attn_window=0 and kv_share=1"),
    (dict(kv_share=3), "attn_window=0 and kv_share=1"),
    (dict(attention="sparse"), "'softmax' or 'linear'"),
])
def test_linear_attention_settings_it_cannot_combine_with(kw, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(n_layer=3, n_head=2, n_embd=32, **{"attention": "linear", **kw})


def test_linear_model_does_not_export_to_hugging_face(tmp_path):
    from smallgpt.hf.convert import save_hf
    with pytest.raises(ValueError, match="attention='linear'"):
        save_hf(tiny(attention="linear", pos_emb="learned"), tmp_path / "hf")
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").iterdir())
