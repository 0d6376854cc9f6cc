"""
Checkpoint files: written atomically, loaded safely, turned back into a model.

A checkpoint is a dict saved with torch.save. It keeps nanoGPT's keys (`model`, `optimizer`,
`model_args`, `iter_num`, `best_val_loss`, `config`) so either repo reads the other's files, and
adds what an exact resume needs (`scaler`, `rng`). Everything in it is tensors and plain Python
values, so `torch.load(..., weights_only=True)` reads it and a file that would run code is refused.
"""

import os
import pickle
import time
import zipfile

import torch

from model import GPT, GPTConfig


class CheckpointError(ValueError):
    """A checkpoint that can't be used; the message is one line that names the file."""


def resolve_name(name):
    """'last' -> 'last.pt', so --checkpoint_name=last works as seed 002 prints it."""
    return name if name.endswith(".pt") else name + ".pt"


def save_checkpoint(obj, path):
    """Write to a temp file in the same folder, fsync, then rename over `path`: a crash at any
    moment leaves either the old file or the new one, never half of one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            slow = float(os.environ.get("NANOGPT_TEST_SLOW_SAVE", "0"))  # tests: widen the window
            if slow:
                time.sleep(slow)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path, device="cpu"):
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((l.strip() for l in first if "GLOBAL" in l or "Unsupported" in l),
                      first[0] if first else "")
        raise CheckpointError(f"{path}: refusing to load: it holds Python objects that would run "
                              f"code when unpickled ({detail[:160]}). Only load checkpoints from "
                              f"sources you trust, saved by train.py") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is truncated or corrupt ({reason}); use another "
                              f"checkpoint (e.g. --checkpoint_name=last.pt) or retrain") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise CheckpointError(f"{path} is not a train.py/nanoGPT checkpoint "
                              f"(it needs 'model' and 'model_args' entries)")
    return ckpt


def clean_state_dict(state):
    """Strip torch.compile's '_orig_mod.' prefix and nanoGPT's causal-mask buffers."""
    out = {}
    for k, v in state.items():
        if k.startswith("_orig_mod."):
            k = k[len("_orig_mod."):]
        if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
            continue  # buffers, not weights (never '.c_attn.bias', which ends differently)
        out[k] = v
    return out


def model_from_checkpoint(ckpt, dropout=None):
    """Build the GPT a checkpoint describes and load its weights (strict)."""
    args = dict(ckpt["model_args"])
    if dropout is not None:
        args["dropout"] = dropout
    try:
        config = GPTConfig(**args)
    except TypeError as e:
        raise CheckpointError(f"checkpoint model_args not understood by this model.py: {e}")
    model = GPT(config)
    model.load_state_dict(clean_state_dict(ckpt["model"]))
    return model
