"""
Converting a trained model's attention by surgery on its weights, so a few steps of training
finish the job (the transformer tutorial's "do a few gradient steps from a saved checkpoint"):

- fewer K/V heads (n_kv_head): the K and V projection rows of the heads that become one group
  are averaged (or the group's first kept), as the GQA paper (Ainslie et al. 2023) uptrains a
  multi-head checkpoint. The query heads a pooled head serves are exactly those its old heads
  served (repeat_kv's contiguous groups), so identical heads in a group change nothing.
- attn_window / window_pattern: no weights change; the layers just see fewer keys.
- kv_share: the first layer of each new group keeps a K/V projection, its own (or the mean of
  the group's); the other layers keep their query rows only.

pool='auto' takes what measured better on the CPU preset (docs/tutorial_exercises.md): the mean
for heads (the heads of a layer read the same input), the first layer's for kv_share (so that
layer computes what it did; a mean of layers that read different inputs fits none of them).

train.py calls convert_resumed_model when a resumed (or Hugging Face) model is asked for other
attention settings; docs/tutorial_exercises.md measures what each conversion costs and how many
steps win it back. The model is handed in: this package never imports model.py.
"""

import dataclasses

import torch

from smallgpt.device import note
from smallgpt.errors import UserError

# the settings a conversion can change; the others (pos_emb, attention, ...) a model keeps
CONVERTIBLE = ("n_kv_head", "attn_window", "window_pattern", "kv_share")
POOLS = ("auto", "mean", "first")


def convert_resumed_model(model, asked, pool="auto"):
    """`asked`: the variant settings the user gave ({key: value}) for a model that came from a
    checkpoint. Returns (model, reshaped): a new model of the asked n_kv_head, attn_window,
    window_pattern and kv_share built from `model`'s weights, with one note saying what was
    done, or the same model when none of those differ; reshaped = some weights changed shape,
    so the saved optimizer state no longer fits them. The other keys are left to the caller
    (runsetup.note_ignored_variants names them). What cannot be converted raises UserError."""
    cfg = model.config
    changes = {k: v for k, v in asked.items() if k in CONVERTIBLE and v != getattr(cfg, k)
               and not (k == "n_kv_head" and (v or cfg.n_head) == cfg.kv_heads)}  # 0 = n_head
    if not changes:
        return model, False
    model, done = convert_attention(model, changes, pool)
    reshaped = "n_kv_head" in changes or "kv_share" in changes
    note(f"converted the checkpoint's model: {done}" + (
        "; the optimizer starts fresh (its Adam moments fit the old weights), so train a few "
        "hundred steps (docs/tutorial_exercises.md)" if reshaped else ""))
    return model, reshaped


def convert_attention(model, changes, pool="auto"):
    """A new model (the class of `model`) with the settings `changes` ({n_kv_head, attn_window,
    window_pattern, kv_share: value}) from `model`'s weights. Returns (model, what was done)."""
    if pool not in POOLS:
        raise UserError(f"kv_pool={pool!r}: use 'auto', 'mean' (average the pooled K/V projections) "
                        f"or 'first'")
    head_pool, layer_pool = ("mean", "first") if pool == "auto" else (pool, pool)
    old = model.config
    if old.attention == "linear" and ({"attn_window", "kv_share"} & set(changes)):
        raise UserError("a linear-attention model keeps one running state per layer: it has no "
                        "window or shared K/V to convert to")
    try:
        new = dataclasses.replace(old, **changes)
    except ValueError as e:  # GPTConfig's own one-line check (a window pattern without a window...)
        raise UserError(f"can't convert the model to {changes}: {e}") from None
    if new.kv_heads > old.kv_heads or old.kv_heads % new.kv_heads:
        raise UserError(f"n_kv_head={new.kv_heads}: the model has {old.kv_heads} K/V heads, and a "
                        f"conversion can only pool them into fewer groups; pass a divisor of "
                        f"{old.kv_heads} (e.g. {old.kv_heads // 2 or 1})")
    state = {k: v.detach() for k, v in model.state_dict().items()}
    for layer in range(old.n_layer):
        if layer % old.kv_share == 0:
            pool_kv_heads(state, layer, old, new.kv_heads, head_pool)
    share_kv(state, old, new, layer_pool)
    converted = type(model)(new)
    converted.load_state_dict(state)
    done = []
    if new.kv_heads != old.kv_heads:
        done.append(f"K/V heads {old.kv_heads} -> {new.kv_heads} (each group's projections: {head_pool})")
    if (new.attn_window, new.window_pattern) != (old.attn_window, old.window_pattern):
        pattern = f", window_pattern={new.window_pattern!r}" if new.window_pattern else ""
        done.append(f"attn_window={new.attn_window}{pattern} (no weights change)")
    if new.kv_share != old.kv_share:
        source = "its first layer's" if layer_pool == "first" else "the mean of its layers'"
        done.append(f"kv_share {old.kv_share} -> {new.kv_share} (each group's K/V: {source})")
    return converted, ", ".join(done)


def qkv_rows(cfg):
    """Where c_attn's output rows are: queries (n_embd), then keys, then values."""
    kv_dim = cfg.kv_heads * (cfg.n_embd // cfg.n_head)
    return cfg.n_embd, kv_dim


def pool_kv_heads(state, layer, cfg, n_kv_head, pool):
    """In place: layer's c_attn K and V rows (and biases) for n_kv_head heads, each the mean (or
    the first) of the old heads it replaces, which are neighbours: old heads g*r .. g*r+r-1."""
    if n_kv_head == cfg.kv_heads:
        return
    C, kv_dim = qkv_rows(cfg)
    hd, r = cfg.n_embd // cfg.n_head, cfg.kv_heads // n_kv_head
    for name in (f"transformer.h.{layer}.attn.c_attn.weight", f"transformer.h.{layer}.attn.c_attn.bias"):
        if name not in state:
            continue
        w = state[name]  # (C + 2 * kv_dim, ...) or its bias
        q, k, v = w.split([C, kv_dim, kv_dim])
        pooled = []
        for t in (k, v):
            t = t.reshape(n_kv_head, r, hd, *t.shape[1:])  # (groups, heads per group, hd, ...)
            t = t.mean(dim=1) if pool == "mean" else t[:, 0]
            pooled.append(t.reshape(n_kv_head * hd, *t.shape[2:]))
        state[name] = torch.cat([q, *pooled])


def share_kv(state, old, new, pool):
    """In place: turn the layers' c_attn / c_q into new.kv_share's layout. The first layer of a
    new group gets the K/V rows of the old owners of its group's layers (mean or first); a layer
    that owned K/V and no longer does keeps its query rows as c_q. Runs after pool_kv_heads, so
    every owner already has new.kv_heads heads."""
    if new.kv_share == old.kv_share:
        return
    C = new.n_embd
    before = dict(state)  # read from the old layout only: groups need not nest (kv_share 2 -> 3)

    def part(layer, kind, sl):  # c_attn.weight/bias rows `sl`, or c_q's for a non-owner
        owner = f"transformer.h.{layer}.attn.c_attn.{kind}"
        return before[owner][sl] if owner in before else before[f"transformer.h.{layer}.attn.c_q.{kind}"]

    kinds = ["weight"] + (["bias"] if new.bias else [])
    for first in range(0, new.n_layer, new.kv_share):
        group = range(first, min(first + new.kv_share, new.n_layer))
        old_owners = sorted({layer // old.kv_share * old.kv_share for layer in group})
        for kind in kinds:
            kv = [before[f"transformer.h.{o}.attn.c_attn.{kind}"][C:] for o in old_owners]
            kv = torch.stack(kv).mean(dim=0) if pool == "mean" else kv[0]
            queries = {layer: part(layer, kind, slice(0, C)) for layer in group}
            for layer in group:
                state.pop(f"transformer.h.{layer}.attn.c_attn.{kind}", None)
                state.pop(f"transformer.h.{layer}.attn.c_q.{kind}", None)
                if layer == first:
                    state[f"transformer.h.{layer}.attn.c_attn.{kind}"] = torch.cat([queries[layer], kv])
                else:
                    state[f"transformer.h.{layer}.attn.c_q.{kind}"] = queries[layer]
