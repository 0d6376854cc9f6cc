"""
The small mechanisms under training, called in-process and checked against values worked out
here: which tokens a batch window holds and which are its targets, where the evaluation windows
start, how a checkpoint reaches the disk and that its weights load strictly, dropout on the
attention weights, and that bf16 autocast really computes in bf16.
(train.py's loop end to end: test_train_mechanics.py; the model's forward against a hand-written
reference: test_model.py; sampling filters: test_sampling.py.)

    python -m pytest tests/test_mechanisms.py -q      # a few seconds

CPU only, offline, no data files but the ones written here.
"""

import os

import numpy as np
import pytest
import torch

import smallgpt.checkpoint  # noqa: E402  (conftest put the repo on sys.path)
import smallgpt.dataloader  # noqa: E402
from model import GPT, CausalSelfAttention, GPTConfig, set_fast_cpu  # noqa: E402
from smallgpt.device import autocast_context  # noqa: E402


def counting_bin(tmp_path, n, dtype="uint16", first=0):
    """A .bin file whose token at position i is first + i: a window's content names its start."""
    path = tmp_path / f"count_{dtype}.bin"
    np.arange(first, first + n, dtype=dtype).tofile(path)
    return str(path)


# ----------------------------------------------------------------------------- batch windows

def test_windows_at_given_offsets_and_their_next_token_targets(tmp_path):
    path = counting_bin(tmp_path, 100)
    x, y = smallgpt.dataloader.sample_batch(path, "uint16", 3, 8, offsets=[0, 17, 91])
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (3, 8)
    assert x.tolist() == [list(range(s, s + 8)) for s in (0, 17, 91)]
    assert y.tolist() == [list(range(s + 1, s + 9)) for s in (0, 17, 91)]  # the last ends at 99


def test_random_windows_are_whole_and_targets_are_the_next_tokens(tmp_path):
    path = counting_bin(tmp_path, 1000)
    x, y = smallgpt.dataloader.sample_batch(path, "uint16", 64, 16, torch.Generator().manual_seed(0))
    starts = x[:, 0]
    assert torch.equal(x, starts[:, None] + torch.arange(16))  # consecutive tokens
    assert torch.equal(y, x + 1)  # each target is the token after its input
    assert len(set(starts.tolist())) > 32  # random starts, not one window repeated


def test_random_windows_reach_the_last_start_and_no_further(tmp_path):
    """block_size + 3 tokens hold 3 whole windows of block_size + 1 tokens (starts 0, 1, 2):
    600 draws see each of them, and nothing past the end."""
    block_size = 8
    path = counting_bin(tmp_path, block_size + 3)
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(20):
        x, y = smallgpt.dataloader.sample_batch(path, "uint16", 30, block_size, g)
        starts.update(x[:, 0].tolist())
        assert int(y.max()) <= block_size + 2
    assert starts == {0, 1, 2}


def test_uint32_token_ids_are_read_whole(tmp_path):
    path = counting_bin(tmp_path, 50, dtype="uint32", first=70_000)  # past uint16's 65,535
    x, y = smallgpt.dataloader.sample_batch(path, "uint32", 2, 4, offsets=[0, 45])
    assert x.tolist() == [[70_000, 70_001, 70_002, 70_003], [70_045, 70_046, 70_047, 70_048]]
    assert y[1].tolist() == [70_046, 70_047, 70_048, 70_049]


@pytest.mark.parametrize("n_tokens, block_size, n_windows, step", [
    (1 + 16 + 7 * 100, 16, 8, 100),   # 8 windows, 100 tokens apart
    (1 + 32 + 3 * 5, 32, 4, 5),       # windows that overlap
    (1 + 32, 32, 3, 0),               # one window fits: every eval window is that one
])
def test_eval_windows_start_at_zero_end_at_the_last_token_evenly_spaced(tmp_path, n_tokens,
                                                                        block_size, n_windows,
                                                                        step):
    """The README: eval windows are spread evenly over the split. The sizes are chosen so the
    spacing is a whole number of tokens: window k starts at k * step, and the last one's target
    is the split's last token."""
    path = counting_bin(tmp_path, n_tokens)
    offsets = smallgpt.dataloader.eval_offsets(path, "uint16", n_windows, block_size)
    assert offsets == [k * step for k in range(n_windows)]
    _, y = smallgpt.dataloader.sample_batch(path, "uint16", n_windows, block_size, offsets=offsets)
    assert int(y[-1, -1]) == n_tokens - 1


# ----------------------------------------------------------------------------- checkpoint files

def test_save_checkpoint_syncs_a_temp_file_then_renames_it(tmp_path, monkeypatch):
    """README: checkpoints are written to a temp file, synced, then renamed, so a kill or a
    power cut at any moment leaves the previous checkpoint or the new one, whole. Checked at the
    moment of the rename: the old file is still whole at the path, the new one complete and
    already synced in a temp file of the same folder; after it, the folder is synced (so the
    rename itself is on disk)."""
    path = tmp_path / "last.pt"
    torch.save({"iter_num": 1}, path)  # the previous checkpoint
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        assert os.path.dirname(os.path.abspath(src)) == str(tmp_path)
        assert torch.load(dst, weights_only=True) == {"iter_num": 1}
        assert torch.load(src, weights_only=True) == {"iter_num": 2}
        events.append(("rename", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    smallgpt.checkpoint.save_checkpoint({"iter_num": 2}, str(path))
    assert torch.load(path, weights_only=True) == {"iter_num": 2}
    new_file, folder = os.stat(path).st_ino, os.stat(tmp_path).st_ino
    assert events == [("fsync", new_file), ("rename", new_file), ("fsync", folder)]
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind


def test_checkpoint_weights_load_strictly():
    """A checkpoint whose weights lack a tensor of its model_args' model, or hold one that model
    has no place for, is refused with one line naming the file: loading it anyway would leave
    freshly initialised weights behind (or ignore trained ones) without a word."""
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    args, state = model.config.to_model_args(), model.state_dict()
    loaded = GPT.from_checkpoint({"model": state, "model_args": args})  # the control
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    missing = {k: v for k, v in state.items() if k != "transformer.ln_f.weight"}
    extra = {**state, "transformer.h.0.attn.c_extra.weight": torch.zeros(4, 4)}
    for broken in (missing, extra):
        with pytest.raises(smallgpt.checkpoint.CheckpointError, match="run/ckpt.pt"):
            GPT.from_checkpoint({"model": broken, "model_args": args},
                                             path="run/ckpt.pt")


# ----------------------------------------------------------------------------- attention dropout

@pytest.mark.parametrize("fast_cpu", [True, False])  # our batched-matmul path, torch's kernel
def test_attention_dropout_is_random_and_unbiased(fast_cpu):
    """Dropout on the attention weights alone (the residual dropout at 0), p=0.5: in training
    the attention output varies from row to row of a batch of identical rows, and its mean over
    the 4000 rows is the eval-mode output (the output is linear in the dropped weights, so the
    1/(1-p) rescaling makes it unbiased), within 5 standard errors."""
    torch.manual_seed(0)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11, dropout=0.0)
    attn = CausalSelfAttention(config)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.5)  # peaked attention, so dropping a weight moves the output
    set_fast_cpu(attn, fast_cpu)
    attn.dropout = attn.attn_dropout.p = 0.5
    x = torch.randn(1, 8, 16).expand(4000, 8, 16)
    with torch.no_grad():
        expected = attn.eval()(x[:1])[0][0]  # forward returns (output, the keys and values)
        out = attn.train()(x)[0]
    spread = out.std(dim=0)
    assert spread.min() > 1e-3, "training output does not vary: no dropout on the attention"
    error = (out.mean(dim=0) - expected).abs()
    assert (error < 5 * spread / 4000 ** 0.5 + 1e-6).all(), error.max()


# ----------------------------------------------------------------------------- precision

def test_bf16_autocast_computes_matmuls_in_bf16():
    """dtype=bfloat16 (the default on CPUs with bf16 units) must change the arithmetic, or a
    bf16 resume test would only be testing fp32 again: under autocast_context a matmul gives
    bf16, and its result differs from fp32's by bf16's rounding, not by fp32's."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
    with autocast_context("cpu", "bfloat16"):
        low = a @ b
    assert low.dtype == torch.bfloat16
    error = (low.float() - a @ b).abs().max().item()
    assert 1e-3 < error < 0.5, error  # bf16 keeps 8 significant bits; |a @ b| is about 8
    with autocast_context("cpu", "float32"):
        assert (a @ b).dtype == torch.float32
