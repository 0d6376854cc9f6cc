"""
Loss by position (smallgpt/metrics.py's loss_by_position, eval.py --by_position=True): the mean
loss at each position of sequences longer than block_size, under each way of reading them. The
reference is the model's plain forward on every prefix, one prefix at a time.

    python -m pytest tests/test_by_position.py -q
"""

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import randomize_weights, run_script
from model import GPT, GPTConfig
from smallgpt.metrics import loss_by_position

BLOCK, LENGTH, VOCAB = 16, 40, 30


def tiny(pos_emb, block_size=BLOCK, seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=VOCAB,
                          pos_emb=pos_emb))
    randomize_weights(model, seed)
    return model.eval()


def ids_for(n_sequences=2):
    gen = torch.Generator().manual_seed(1)
    return torch.randint(VOCAB, (LENGTH * n_sequences + 7,), generator=gen).numpy()


def prefix_losses(seq, logits_of_prefix):
    """(LENGTH - 1,) cross-entropy of each next token, from the logits of each prefix alone."""
    out = []
    with torch.no_grad():
        for i in range(1, len(seq)):
            logits = logits_of_prefix(seq[None, :i])[0, -1]
            out.append(F.cross_entropy(logits[None].float(), seq[i:i + 1]).item())
    return np.array(out)


def reference(ids, logits_of_prefix):
    """The mean over the two sequences loss_by_position reads with n_sequences=2: the first and
    the last LENGTH tokens of ids."""
    seqs = [torch.as_tensor(ids[:LENGTH]), torch.as_tensor(ids[len(ids) - LENGTH - 1:len(ids) - 1])]
    return np.mean([prefix_losses(s.long(), logits_of_prefix) for s in seqs], axis=0)


def test_rope_whole_history_equals_a_forward_of_every_prefix():
    model, ids = tiny("rope"), ids_for()
    unlimited = tiny("rope", block_size=LENGTH)  # the same weights with room for the whole sequence
    unlimited.load_state_dict(model.state_dict())
    got = loss_by_position(model, ids, LENGTH, n_sequences=2, context_window=-1)
    want = reference(ids, lambda x: unlimited(x)[0])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert got[BLOCK:].mean() != pytest.approx(got[:BLOCK].mean(), abs=1e-3)


def test_rope_band_and_learned_crop_equal_their_prefix_forwards():
    ids = ids_for()
    model = tiny("rope")
    got = loss_by_position(model, ids, LENGTH, n_sequences=2)  # default: a band of block_size
    want = reference(ids, lambda x: model(x, band=BLOCK)[0])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    learned = tiny("learned")
    got = loss_by_position(learned, ids, LENGTH, n_sequences=2)  # nanoGPT's crop
    want = reference(ids, lambda x: learned(x[:, -BLOCK:])[0])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_sinks_and_xl_memory_within_block_size_are_the_plain_model():
    """Before the cache rolls over (or the first segment ends), sinks and an XL memory change
    nothing: the first block_size positions equal the plain forward; after, they differ."""
    model, ids = tiny("rope"), ids_for()
    plain = loss_by_position(model, ids, LENGTH, n_sequences=2, context_window=-1)
    for policy in (dict(kv_sink=2), dict(xl_memory=BLOCK)):
        got = loss_by_position(model, ids, LENGTH, n_sequences=2, **policy)
        np.testing.assert_allclose(got[:BLOCK - 1], plain[:BLOCK - 1], atol=1e-5, rtol=0)
        assert not np.allclose(got[BLOCK:], plain[BLOCK:], atol=1e-4), policy


def test_eval_by_position_writes_csv_and_png(char_dataset, vocab, tmp_path):
    """eval.py --by_position=True on a rope checkpoint: the CSV's column is the function's
    numbers, the PNG exists; windows past block_size are accepted for rope, refused for learned."""
    for pos_emb in ("rope", "learned"):
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK,
                              vocab_size=len(vocab), pos_emb=pos_emb))
        meta = json.loads((char_dataset / "meta.json").read_text())
        (tmp_path / pos_emb).mkdir()
        torch.save({"model": model.state_dict(), "model_args": model.config.to_model_args(),
                    "meta": meta, "config": {"dataset": str(char_dataset)}},
                   tmp_path / pos_emb / "ckpt.pt")
    common = ["--device=cpu", "--dtype=float32", f"--dataset={char_dataset}"]
    done = run_script("eval.py", f"--out_dir={tmp_path / 'rope'}", "--by_position=True",
                      "--by_position_sequences=3", "--json=True", "--kv_sink=2", *common, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "%|" not in done.stderr  # progress bars only on a terminal, not in a captured log
    result = json.loads(done.stdout)
    rows = (tmp_path / "rope" / "loss_by_position.csv").read_text().splitlines()
    assert rows[0].startswith("position,") and len(rows) == 4 * BLOCK  # header + 4 x block_size - 1
    column = np.array([float(r.split(",")[1]) for r in rows[1:]])
    assert column[:BLOCK].mean() == pytest.approx(result["loss_inside_block"], abs=1e-5)
    assert (tmp_path / "rope" / "loss_by_position.png").stat().st_size > 1000
    longer = run_script("eval.py", f"--out_dir={tmp_path / 'rope'}", f"--block_size={2 * BLOCK}",
                        "--json=True", *common, cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    refused = run_script("eval.py", f"--out_dir={tmp_path / 'learned'}", f"--block_size={2 * BLOCK}",
                         *common, cwd=tmp_path)
    assert refused.returncode != 0 and "positions" in refused.stderr


def test_one_forward_equals_the_decode_loop():
    """The one-pass path (rope/none, no sinks or budget) against generate.teacher_forced, the
    decode loop fed the known tokens: a band longer than block_size, through a cache."""
    from smallgpt.generate import teacher_forced
    model, ids = tiny("rope"), ids_for()
    for window in (2 * BLOCK, -1, 5):
        got = loss_by_position(model, ids, LENGTH, n_sequences=2, context_window=window)
        seqs = torch.stack([torch.as_tensor(ids[:LENGTH]),
                            torch.as_tensor(ids[len(ids) - LENGTH - 1:len(ids) - 1])]).long()
        nll, _ = teacher_forced(model, seqs, window, per_position=True)
        np.testing.assert_allclose(got, nll.mean(0).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos_emb,attention", [("learned", "softmax"), ("none", "linear")])
def test_a_window_inside_block_size_equals_the_decode_loop_for_any_model(pos_emb, attention):
    """When block_size holds the whole window's inputs (its last token is only a target) nothing
    is cropped, so a learned-position or a linear-attention model is read in one forward too;
    its numbers are the decode loop's."""
    from smallgpt.generate import teacher_forced
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=LENGTH - 1, vocab_size=VOCAB,
                          pos_emb=pos_emb, attention=attention))
    randomize_weights(model, 0)
    model.eval()
    ids = ids_for()
    seqs = torch.stack([torch.as_tensor(ids[:LENGTH]),
                        torch.as_tensor(ids[len(ids) - LENGTH - 1:len(ids) - 1])]).long()
    nll, _ = teacher_forced(model, seqs, None, per_position=True)
    for window in (0, -1, LENGTH):
        got = loss_by_position(model, ids, LENGTH, n_sequences=2, context_window=window)
        np.testing.assert_allclose(got, nll.mean(0).numpy(), atol=1e-5, rtol=0)
