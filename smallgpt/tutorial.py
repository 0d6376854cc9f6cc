"""
The transformer tutorial's files (janchorowski/transformer_tutorial, a nanoGPT fork used in a
course), read as this repo's: its checkpoints become ours on load, its data folders become
prepared datasets the first time they are read.

Its model is ours with pos_emb='rope' and a byte vocabulary, in another layout:
- rotary embeddings from the rotary_embedding_torch package turn neighbouring channels
  (2i, 2i + 1) of each head; ours (model.py's apply_rope) turns the two halves (i, i + hd/2),
  at the same angles. Reordering the q and k rows of c_attn (and their Adam moments) to put
  channel 2i at i and 2i + 1 at i + hd/2 gives the same scores, so the same logits.
- each layer holds `attn.rotary_emb.freqs` (the angles per position), which we compute instead;
- `model_args` has no block_size (its model has no limit; its config's block_size is what it
  trained with, and becomes ours), no vocab_size (256 raw bytes);
- a checkpoint has no iter_num, best_val_loss or meta: a resumed run counts from 0 and the
  vocabulary is 'bytes' (smallgpt/tokenizer.py); its config's dataset names a folder of its own
  repo (kept as tutorial_dataset), so eval.py and train.py take --dataset=FOLDER.
Its data folders hold train.txt and val.txt, raw bytes next to its prepare.py; read_text_folder
writes train.bin, val.bin and meta.json beside them once, and from then on they are a
prepared dataset like any other (prepare_text_folder, called where train.py and eval.py open
a dataset).

    from smallgpt.tutorial import is_tutorial_checkpoint, from_tutorial
    if is_tutorial_checkpoint(ckpt): ckpt = from_tutorial(ckpt, path)   # load_checkpoint does this
"""

import hashlib
import json
import os
import sys

import numpy as np
import torch

from smallgpt.prepare import write_dataset

BYTES_META = {"version": 1, "tokenizer": "bytes", "vocab_size": 256, "dtype": "uint16"}
TUTORIAL_BLOCK_SIZE = 256  # its train.py's default, for a config that doesn't say


def is_tutorial_checkpoint(ckpt):
    """True for a checkpoint the tutorial's train.py wrote: rotary tables in the weights, no
    block_size in model_args (ours always has one)."""
    args, state = ckpt.get("model_args"), ckpt.get("model")
    return (isinstance(args, dict) and "block_size" not in args and isinstance(state, dict)
            and any(k.endswith("attn.rotary_emb.freqs") for k in state))


def halves_order(head_dim):
    """Channel order that takes a head from neighbouring pairs to halves: new channel i < hd/2
    is old 2i, new channel hd/2 + i is old 2i + 1."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def qk_rows(n_embd, n_head):
    """The row order of c_attn (3 * n_embd outputs: q, k, v) that reorders every q and k head
    with halves_order and leaves v as it is."""
    hd = n_embd // n_head
    per_head = halves_order(hd)
    qk = torch.cat([h * hd + per_head for h in range(2 * n_head)])  # q heads, then k heads
    return torch.cat([qk, torch.arange(2 * n_embd, 3 * n_embd)])


def rope_theta_of(freqs, head_dim, path):
    """The rotary base the saved angles freqs (hd/2,) were made with, checked: rotary_embedding_torch
    computes theta^(-2i/hd). Learned or otherwise changed angles can't be ours: ValueError."""
    freqs = freqs.detach().double().cpu()
    theta = float(freqs[1] ** (-head_dim / 2)) if freqs.numel() > 1 else 10000.0
    theta = float(f"{theta:.5g}")  # fp32 angles leave theta a few ppm off its round value
    expected = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if freqs.shape != expected.shape or not torch.allclose(freqs, expected, rtol=1e-5, atol=0):
        raise ValueError(f"{path}: its rotary frequencies are not theta^(-2i/head_dim) for one theta "
                         f"(learned, or another rotary setting); this model can't reproduce them")
    return theta


def from_tutorial(ckpt, path="the checkpoint"):
    """The tutorial's checkpoint dict as one of ours (a new dict; `ckpt` is not changed): the
    weights reordered for our rotary layout, model_args with block_size and pos_emb='rope',
    the bytes vocabulary as meta, the optimizer's moments reordered the same way, and counters
    for a resume. A note on stderr says what was done."""
    args, config = dict(ckpt["model_args"]), dict(ckpt.get("config") or {})
    for key in ("n_layer", "n_head", "n_embd"):
        if not isinstance(args.get(key), int):
            raise ValueError(f"{path}: model_args has no integer {key!r}; is it the tutorial's checkpoint?")
    n_embd, n_head = args["n_embd"], args["n_head"]
    head_dim = n_embd // n_head
    state = {k[len("_orig_mod."):] if k.startswith("_orig_mod.") else k: v
             for k, v in ckpt["model"].items()}
    freqs = [v for k, v in state.items() if k.endswith("attn.rotary_emb.freqs")]
    theta = rope_theta_of(freqs[0], head_dim, path)
    if any(not torch.equal(f, freqs[0]) for f in freqs[1:]):
        raise ValueError(f"{path}: its layers' rotary frequencies differ; this model uses one set")
    rows = qk_rows(n_embd, n_head)
    converted = {}
    for k, v in state.items():
        if ".rotary_emb." in k:
            continue  # its angle tables (and caches): ours are computed from rope_theta
        converted[k] = v[rows] if k.endswith("attn.c_attn.weight") or k.endswith("attn.c_attn.bias") else v
    block_size = int(config.get("block_size") or TUTORIAL_BLOCK_SIZE)
    if "dataset" in config:  # a folder of its repo, not data/NAME here (ours of that name is chars)
        config["tutorial_dataset"] = config.pop("dataset")
    model_args = dict(n_layer=args["n_layer"], n_head=n_head, n_embd=n_embd, block_size=block_size,
                      bias=bool(args.get("bias", False)), vocab_size=256,
                      dropout=float(args.get("dropout", 0.0)), pos_emb="rope")
    if theta != 10000.0:
        model_args["rope_theta"] = theta
    out = dict(ckpt, model=converted, model_args=model_args, config=config, meta=dict(BYTES_META),
               iter_num=int(ckpt.get("iter_num", 0)),
               best_val_loss=float(ckpt.get("best_val_loss", 1e9)), converted_from="transformer tutorial")
    if isinstance(ckpt.get("optimizer"), dict):
        out["optimizer"] = reorder_adam_moments(ckpt["optimizer"], converted, rows)
    print(f"note: {path} is the transformer tutorial's checkpoint: read as pos_emb='rope' "
          f"(q/k channels reordered for our rotary pairs), block_size={block_size} (its training "
          f"block), bytes vocabulary", file=sys.stderr)
    return out


def reorder_adam_moments(opt_state, converted, rows):
    """A copy of the optimizer state with c_attn's moments reordered like its rows. Both repos
    build AdamW the same way: the matrices in parameter order, then the vectors (the tutorial's
    rotary frequencies are not trained, so not in it), which is the order of `converted`'s
    keys once the tied lm_head.weight is dropped."""
    names = [k for k in converted if k != "lm_head.weight"]
    ordered = [k for k in names if converted[k].dim() >= 2] + [k for k in names if converted[k].dim() < 2]
    ids = [i for group in opt_state["param_groups"] for i in group["params"]]
    if len(ids) != len(ordered):
        return opt_state  # another optimizer layout: restore_run will say it doesn't fit
    state = {i: dict(s) for i, s in opt_state["state"].items()}
    for i, name in zip(ids, ordered):
        if ".attn.c_attn." in name and i in state:
            for key, t in state[i].items():
                if torch.is_tensor(t) and t.dim() >= 1 and t.size(0) == len(rows):
                    state[i][key] = t[rows]
    return dict(opt_state, state=state)


def prepare_text_folder(folder):
    """The scripts' hook: a tutorial data folder gets its .bin files and meta.json once, and
    again when its train.txt / val.txt change (the tutorial's own scripts read the .txt files,
    so the .bin files must not go stale beside them)."""
    if not os.path.isdir(folder) or not all(os.path.isfile(os.path.join(folder, f"{split}.txt"))
                                            for split in ("train", "val")):
        return
    if is_text_folder(folder):
        read_text_folder(folder)
    elif changed := changed_texts(folder):
        print(f"note: {folder}: {' and '.join(changed)} changed since train.bin / val.bin were "
              f"written from them: writing them again", file=sys.stderr)
        read_text_folder(folder)


def is_text_folder(folder):
    """A tutorial data folder: train.txt and val.txt, and no prepared .bin files or meta."""
    def has(name):
        return os.path.isfile(os.path.join(folder, name))
    return has("train.txt") and has("val.txt") and not (has("meta.json") or has("meta.pkl")
                                                        or has("train.bin"))


def text_stamp(path):
    """What identifies a .txt file's content: its size, time and sha256."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    info = os.stat(path)
    return {"bytes": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": digest}


def changed_texts(folder):
    """The .txt files of a folder read_text_folder wrote whose content is no longer what its
    .bin files were written from (size, else sha256 when the time moved); [] for a folder
    prepared any other way."""
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            stamps = json.load(f).get("text_files")
    except (OSError, ValueError, AttributeError):
        return []
    changed = []
    for name, old in (stamps or {}).items() if isinstance(stamps, dict) else []:
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or not isinstance(old, dict):
            continue
        info = os.stat(path)
        if info.st_size != old.get("bytes") or (info.st_mtime_ns != old.get("mtime_ns")
                                                and text_stamp(path)["sha256"] != old.get("sha256")):
            changed.append(name)
    return changed


def read_text_folder(folder):
    """Write train.bin, val.bin and meta.json (bytes tokenizer: token = byte value) from the
    tutorial's train.txt and val.txt in `folder`; returns the meta. The .txt files are left as
    they are, so the tutorial's own scripts still read the folder; meta.json records what they
    were (changed_texts)."""
    splits = {split: np.fromfile(os.path.join(folder, f"{split}.txt"), dtype=np.uint8)
              for split in ("train", "val")}
    meta = dict(BYTES_META, source=os.path.join(folder, "train.txt + val.txt (the transformer tutorial)"),
                text_files={f"{split}.txt": text_stamp(os.path.join(folder, f"{split}.txt"))
                            for split in ("train", "val")})
    try:
        write_dataset(folder, splits, meta)
    except OSError as e:
        raise ValueError(f"{folder} holds the transformer tutorial's train.txt / val.txt, and "
                         f"train.bin / val.bin could not be written beside them ({e.strerror}); "
                         f"copy the folder somewhere writable and pass that") from None
    print(f"note: {folder}: the transformer tutorial's train.txt / val.txt, written as "
          f"train.bin / val.bin / meta.json (bytes tokenizer; again when they change)", file=sys.stderr)
    return meta
