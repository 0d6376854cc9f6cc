"""
Tests for converting a trained model's attention on resume (smallgpt/convert_attention.py):
fewer K/V heads, a window, shared K/V, and train.py's --init_from=resume with those settings.

    python -m pytest tests/test_convert_attention.py -q

CPU only, offline, ~15 s. The references are built here by hand: a model whose heads in a group
are identical (so pooling them changes nothing), a model of the target shape constructed with
the same weights copied in row by row, and the means computed from the original's rows.
"""

import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from conftest import error_lines, randomize_weights, run_train  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from smallgpt.convert_attention import convert_attention  # noqa: E402
from smallgpt.errors import UserError  # noqa: E402

TINY = dict(n_layer=4, n_head=4, n_embd=32, block_size=16, vocab_size=50, dropout=0.0, bias=True)
HD = 8  # n_embd / n_head
C = 32


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return randomize_weights(GPT(GPTConfig(**{**TINY, **overrides})), seed=seed).eval()


def logits_of(model, T=16):
    idx = torch.randint(0, TINY["vocab_size"], (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(idx, all_logits=True)[0]


def heads(t, n):
    """Rows (n * HD, ...) -> a list of n per-head blocks (HD, ...)."""
    return list(t.split(HD))[:n]


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
@pytest.mark.parametrize("n_kv_head", [2, 1])
def test_pooling_identical_heads_changes_nothing(pos_emb, n_kv_head):
    """A 4-head model whose K/V heads are equal within each group of 4 / n_kv_head is a GQA
    model in disguise: pooled, its logits are the same, and equal those of a GQA model built
    directly with one copy of each group's head."""
    full = tiny_model(pos_emb=pos_emb)
    group = 4 // n_kv_head
    gqa = GPT(GPTConfig(**TINY, pos_emb=pos_emb, n_kv_head=n_kv_head)).eval()
    gqa.load_state_dict({k: v for k, v in full.state_dict().items() if ".c_attn." not in k},
                        strict=False)  # everything but c_attn fits; c_attn is set below
    with torch.no_grad():
        for block, small in zip(full.transformer.h, gqa.transformer.h):
            for kind in ("weight", "bias"):
                w = getattr(block.attn.c_attn, kind)  # (C + 2 C) rows: q, k, v of 4 heads each
                q, k, v = w[:C], w[C:2 * C], w[2 * C:]
                kept_k = [heads(k, 4)[g * group] for g in range(n_kv_head)]
                kept_v = [heads(v, 4)[g * group] for g in range(n_kv_head)]
                # the full model's head h gets its group's first head: identical within groups
                k.copy_(torch.cat([kept_k[h // group] for h in range(4)]))
                v.copy_(torch.cat([kept_v[h // group] for h in range(4)]))
                getattr(small.attn.c_attn, kind).copy_(torch.cat([q, *kept_k, *kept_v]))
    for pool in ("mean", "first"):
        converted, _ = convert_attention(full, {"n_kv_head": n_kv_head}, pool)
        assert converted.config.kv_heads == n_kv_head
        torch.testing.assert_close(logits_of(converted), logits_of(full), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits_of(converted), logits_of(gqa), rtol=0, atol=0)


def test_pooled_heads_are_the_mean_or_the_first_of_their_group():
    full = tiny_model()
    for pool in ("mean", "first"):
        converted, _ = convert_attention(full, {"n_kv_head": 2}, pool)
        for block, new in zip(full.transformer.h, converted.transformer.h):
            w, w_new = block.attn.c_attn.weight, new.attn.c_attn.weight  # (96, C) -> (64, C)
            assert w_new.shape == (C + 2 * 2 * HD, C)
            torch.testing.assert_close(w_new[:C], w[:C], rtol=0, atol=0)  # queries untouched
            for part in range(2):  # keys, then values
                old = heads(w[C + part * C:], 4)
                new_heads = heads(w_new[C + part * 2 * HD:], 2)
                for g in range(2):
                    want = (old[2 * g] + old[2 * g + 1]) / 2 if pool == "mean" else old[2 * g]
                    torch.testing.assert_close(new_heads[g], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window", [dict(attn_window=5), dict(attn_window=4, window_pattern="SL")])
def test_window_conversion_equals_a_model_built_with_the_window(window):
    full = tiny_model(pos_emb="rope")
    built = GPT(GPTConfig(**TINY, pos_emb="rope", **window)).eval()
    built.load_state_dict(full.state_dict())
    converted, what = convert_attention(full, window)
    assert "no weights change" in what
    torch.testing.assert_close(logits_of(converted), logits_of(built), rtol=0, atol=0)
    assert not torch.allclose(logits_of(converted), logits_of(full))  # the window does bite


@pytest.mark.parametrize("pool", ["mean", "first"])
def test_kv_share_takes_the_groups_mean_or_first_projection(pool):
    """kv_share 1 -> 2 on 4 layers: layers 0 and 2 keep c_attn with the group's K/V rows (the
    mean of layers 0-1 / 2-3, or their first layer's), layers 1 and 3 keep their query rows as
    c_q; the logits equal a kv_share=2 model assembled by hand from those rows."""
    full = tiny_model(pos_emb="rope", n_kv_head=2)
    converted, _ = convert_attention(full, {"kv_share": 2}, pool)
    built = GPT(GPTConfig(**TINY, pos_emb="rope", n_kv_head=2, kv_share=2)).eval()
    state = {k: v for k, v in full.state_dict().items() if ".attn.c_attn." not in k}
    for first in (0, 2):
        for kind in ("weight", "bias"):
            a = full.state_dict()[f"transformer.h.{first}.attn.c_attn.{kind}"]
            b = full.state_dict()[f"transformer.h.{first + 1}.attn.c_attn.{kind}"]
            kv = (a[C:] + b[C:]) / 2 if pool == "mean" else a[C:]
            state[f"transformer.h.{first}.attn.c_attn.{kind}"] = torch.cat([a[:C], kv])
            state[f"transformer.h.{first + 1}.attn.c_q.{kind}"] = b[:C]
    built.load_state_dict(state)
    torch.testing.assert_close(logits_of(converted), logits_of(built), rtol=0, atol=0)
    assert converted.transformer.h[1].attn.owns_kv is False


def test_kv_share_groups_that_dont_nest():
    """kv_share 2 -> 3 on 4 layers: groups (0, 1, 2) and (3,); layer 3's K/V came from layer 2,
    which now only projects queries: the new group's K/V is the old owner's, read before the
    rewrite."""
    shared = tiny_model(n_layer=4, kv_share=2)
    converted, _ = convert_attention(shared, {"kv_share": 3}, "first")
    old, new = shared.state_dict(), converted.state_dict()
    torch.testing.assert_close(new["transformer.h.3.attn.c_attn.weight"],
                               torch.cat([old["transformer.h.3.attn.c_q.weight"],
                                          old["transformer.h.2.attn.c_attn.weight"][C:]]), rtol=0, atol=0)
    torch.testing.assert_close(new["transformer.h.2.attn.c_q.weight"],
                               old["transformer.h.2.attn.c_attn.weight"][:C], rtol=0, atol=0)


def test_auto_pool_is_the_mean_for_heads_and_the_first_for_layers():
    model = tiny_model(pos_emb="rope")
    for changes, chosen in (({"n_kv_head": 2}, "mean"), ({"kv_share": 2}, "first")):
        auto, _ = convert_attention(model, changes)
        other = "first" if chosen == "mean" else "mean"
        torch.testing.assert_close(logits_of(auto), logits_of(convert_attention(model, changes, chosen)[0]),
                                   rtol=0, atol=0)
        assert not torch.allclose(logits_of(auto), logits_of(convert_attention(model, changes, other)[0]))


def test_undoing_kv_share_gives_every_layer_its_groups_projection():
    """kv_share 2 -> 1: every layer projects its own K/V again, starting from the group's
    (not the same model: layer 1 now applies it to its own input, not to layer 0's)."""
    shared = tiny_model(pos_emb="rope", kv_share=2)
    converted, _ = convert_attention(shared, {"kv_share": 1})
    old, new = shared.state_dict(), converted.state_dict()
    for layer in range(4):
        owner = layer // 2 * 2
        own_q = old[f"transformer.h.{layer}.attn.c_{'attn' if layer == owner else 'q'}.weight"][:C]
        want = torch.cat([own_q, old[f"transformer.h.{owner}.attn.c_attn.weight"][C:]])
        torch.testing.assert_close(new[f"transformer.h.{layer}.attn.c_attn.weight"], want,
                                   rtol=0, atol=0)
    assert all(block.attn.owns_kv for block in converted.transformer.h)


@pytest.mark.parametrize("changes, words", [
    (dict(n_kv_head=3), "must divide n_head=4"),
    (dict(n_kv_head=4), "can only pool them into fewer groups"),
])
def test_settings_that_cannot_be_converted_are_one_line(changes, words):
    model = tiny_model(n_kv_head=2)
    with pytest.raises(UserError, match=words) as e:
        convert_attention(model, changes)
    assert "\n" not in str(e.value)


def test_resume_with_fewer_kv_heads_converts_and_saves_the_new_shape(char_dataset, tmp_path):
    out_dir = tmp_path / "out"
    result = run_train(char_dataset, out_dir, "--max_iters=4", "--eval_interval=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    # TINY in conftest: n_head=2, n_embd=32 -> head size 16
    result = run_train(char_dataset, out_dir, "--max_iters=8", "--eval_interval=4",
                       "--init_from=resume", "--resume_checkpoint_name=last", "--n_kv_head=1",
                       "--attn_window=8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from" in result.stdout
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "K/V heads 2 -> 1" in notes[0] and "attn_window=8" in notes[0] \
        and "optimizer starts fresh" in notes[0], result.stderr
    after = torch.load(out_dir / "last.pt", weights_only=True)
    assert after["iter_num"] == 8
    assert after["model_args"]["n_kv_head"] == 1 and after["model_args"]["attn_window"] == 8
    assert after["model"]["transformer.h.0.attn.c_attn.weight"].shape == (32 + 2 * 16, 32)
    assert int(after["optimizer"]["state"][0]["step"]) == 4  # fresh at iteration 4
    # a window alone changes no shape: the Adam moments carry on
    result = run_train(char_dataset, out_dir, "--max_iters=10", "--eval_interval=4",
                       "--init_from=resume", "--resume_checkpoint_name=last", "--attn_window=4",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == ["note: converted the checkpoint's model: attn_window=4 (no weights change)"]
    after = torch.load(out_dir / "last.pt", weights_only=True)
    assert after["model_args"]["attn_window"] == 4 and int(after["optimizer"]["state"][0]["step"]) == 6
    # asked for more K/V heads than the checkpoint now has: one line, and nothing written
    before = (out_dir / "last.pt").read_bytes()
    result = run_train(char_dataset, out_dir, "--max_iters=12", "--init_from=resume",
                       "--resume_checkpoint_name=last", "--n_kv_head=2", cwd=tmp_path)
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: n_kv_head=2"), result.stderr
    assert (out_dir / "last.pt").read_bytes() == before
