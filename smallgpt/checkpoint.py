"""
Checkpoint files: what goes into one (run_checkpoint, gather_run_state), written atomically and
loaded safely, and what comes out of one when a run continues (restore_run). GPT.from_checkpoint
in model.py turns one back into a model.

A checkpoint is a dict saved with torch.save. It keeps nanoGPT's keys (`model`, `optimizer`,
`model_args`, `iter_num`, `best_val_loss`, `config`) so either repo reads the other's files, and
adds what an exact resume needs (`scaler`, `rng`). Everything in it is tensors and plain Python
values, so `torch.load(..., weights_only=True)` reads it and a file that would run code is refused.
"""

import errno
import os
import pickle
import shutil
import time
import warnings
import zipfile

import torch
import torch.distributed as dist

from smallgpt.dataloader import load_meta
from smallgpt.errors import UserError
from smallgpt.hf.common import read_vocab_meta
from smallgpt.tutorial import from_tutorial, is_tutorial_checkpoint


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout, above smallgpt/


class CheckpointError(UserError):
    """A checkpoint that can't be used; the message is one line that names the file."""


def resolve_name(name):
    """'last' -> 'last.pt', so --checkpoint_name=last works as the transformer tutorial prints it."""
    return name if name.endswith(".pt") else name + ".pt"


def tensor_bytes(obj):
    """The bytes of the tensors in `obj` (dicts, lists, tuples of them): about a checkpoint's size."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(obj, path):
    """Write to a temp file in the same folder, fsync, then rename over `path`: a crash at any
    moment leaves either the old file or the new one, never half of one. A write that fails (a
    full disk, a folder gone read-only) is a CheckpointError of one line; `path` is untouched."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        _write_and_rename(obj, path, tmp)
    except (OSError, RuntimeError) as error:
        e = error  # torch.save turns a failed write into RuntimeError("unexpected pos"): the cause
        while e is not None and not isinstance(e, OSError):
            e = e.__context__
        if e is None:
            raise
        folder = os.path.dirname(os.path.abspath(path))
        kept = f"{path} is intact" if os.path.isfile(path) else f"nothing was written at {path}"
        space = ""
        if e.errno == errno.ENOSPC:
            free = shutil.disk_usage(folder).free
            space = (f": it needs about {tensor_bytes(obj) / 1e6:.1f} MB, {free / 1e6:.1f} MB are "
                     f"free on that disk")
        raise CheckpointError(f"can't write {path} ({e.strerror or e}){space}; {kept}. Free some "
                              f"space or pass another --out_dir, then resume") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_and_rename(obj, path, tmp):
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        slow = float(os.environ.get("NANOGPT_TEST_SLOW_SAVE", "0"))  # tests: widen the window
        if slow:
            time.sleep(slow)
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself survive a power cut (POSIX)
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def missing_checkpoint_message(path):
    """'no checkpoint at PATH' with what to do: the checkpoints its folder does have, if any."""
    folder = os.path.dirname(path) or "."
    others = sorted(f for f in os.listdir(folder) if f.endswith(".pt")
                    and os.path.isfile(os.path.join(folder, f))) if os.path.isdir(folder) else []
    hint = (f"{folder} has {', '.join(others)}: pick one with --checkpoint_name / "
            f"--resume_checkpoint_name" if others else
            "train a model first (python train.py ...) or point --out_dir at its folder")
    return f"no checkpoint at {path}; {hint}"


def other_checkpoint_hint(path):
    """What to use instead of a damaged `path`: the run's other checkpoint (ckpt.pt <-> last.pt)
    when its folder has one, else retraining."""
    folder, name = os.path.split(path)
    other = {"ckpt.pt": "last.pt", "last.pt": "ckpt.pt"}.get(name)
    if other and os.path.isfile(os.path.join(folder, other)):
        return (f"use the run's other checkpoint, {other} (train.py --resume_checkpoint_name="
                f"{other}; sample.py, eval.py --checkpoint_name={other}), or retrain")
    return "use another checkpoint or retrain"


def verify_zip(path):
    """Check every CRC-32 of a checkpoint (torch.save writes a zip with one per tensor) before
    torch.load reads it: flipped bytes inside the weights otherwise load as numbers, and a
    resumed run saves them again. Reading the file once costs ~0.1 s per 100 MB (checkpoints.md)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # the first member whose CRC doesn't match, or None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or cut short (its zip structure is damaged: "
                              f"{str(e)[:100]}); {other_checkpoint_hint(path)}") from None
    if damaged is not None:
        raise CheckpointError(f"{path} is corrupt (the CRC of {damaged!r} doesn't match: the "
                              f"file changed after it was saved); {other_checkpoint_hint(path)}")


def load_checkpoint(path, device="cpu"):
    if not os.path.isfile(path):
        raise CheckpointError(missing_checkpoint_message(path))
    if zipfile.is_zipfile(path):  # torch.save's format since 1.6; the legacy one has no CRCs
        verify_zip(path)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        code = next((line for line in lines if "GLOBAL" in line), None)
        if code is not None:  # a class or function reference: the way a pickle runs code
            detail = code.split(" was not an allowed global")[0].split("Unsupported global: ")[-1]
            raise CheckpointError(f"{path}: refusing to load: it holds Python objects that would run "
                                  f"code when unpickled ({detail[:120]}). Only load checkpoints from "
                                  f"sources you trust, saved by train.py") from None
        detail = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")
        raise CheckpointError(f"{path} is not a checkpoint torch.load can read safely, or is corrupt "
                              f"({detail[:120]}); {other_checkpoint_hint(path)}") from None
    except Exception as e:  # RuntimeError, EOFError, IndexError...: whatever a damaged file raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = first.split(". ")[0][:160]  # torch appends advice that doesn't apply here
        raise CheckpointError(f"{path} is truncated or corrupt ({reason}); "
                              f"{other_checkpoint_hint(path)}") from None
    if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        raise CheckpointError(f"{path} holds only a state_dict ({len(ckpt)} tensors), without the "
                              f"model's shape; to sample from it, save it as {{'model': state_dict, "
                              f"'model_args': dict(n_layer=..., n_head=..., n_embd=..., block_size=..., "
                              f"vocab_size=...)}}; a run can't resume from weights alone")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise CheckpointError(f"{path} is not a train.py/nanoGPT checkpoint "
                              f"(it needs 'model' and 'model_args' entries)")
    if is_tutorial_checkpoint(ckpt):  # the transformer tutorial's: converted here, once per load
        try:
            ckpt = from_tutorial(ckpt, path)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    return ckpt


def peek_checkpoint(path):
    """A checkpoint's model_args, iter_num and config, without reading its weights into memory
    (mmap), or None when the file can't be read as a checkpoint."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return {k: ckpt.get(k) for k in ("model_args", "iter_num", "config")}
    except Exception:  # whatever a damaged or foreign file raises: there is just nothing to show
        return None


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


def gather_run_state(model, optimizer, streams, world_size=1, sharded=False):
    """What rank 0 saves of a run: the model and optimizer state (under FSDP gathered from the
    shards into full tensors on rank 0) and every rank's random streams (runstate.RandomStreams),
    one entry per rank. Under torchrun every rank must call this: it is collective."""
    if sharded:
        from smallgpt.distributed import full_state  # FSDP's imports cost a second: only when sharded
        model_state, optimizer_state = full_state(model, optimizer)
    else:
        model_state, optimizer_state = model.state_dict(), optimizer.state_dict()
    rng = [None] * world_size
    if world_size > 1:
        dist.all_gather_object(rng, streams.state())
    else:
        rng[0] = streams.state()
    return {"model": model_state, "optimizer": optimizer_state, "rng": rng}


def run_checkpoint(state, scaler, model_args, iter_num, best_val_loss, config, meta):
    """The dict train.py writes: nanoGPT's keys, then what an exact resume needs."""
    return {
        "model": state["model"],
        "optimizer": state["optimizer"],
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "model_args": model_args,
        "iter_num": iter_num,
        "best_val_loss": best_val_loss,
        "config": config,
        "meta": meta,  # the vocabulary, so sample.py works without the data folder
        "rng": state["rng"],  # one entry per rank
        "world_size": len(state["rng"]),
    }


def restore_run(checkpoint, optimizer, scaler, streams, rank=0, world_size=1, seed=1337,
                sharded_model=None):
    """Continue the run `checkpoint` holds, in one place: the AdamW state, the loss scaler, the
    random streams (`streams`, runstate.RandomStreams: this rank's, or a fresh dropout seed when
    the number of processes changed) and the counters; returns (iter_num, best_val_loss).
    The weights came in with the model (GPT.from_checkpoint), before a longer block_size grew
    its position table from the learned rows; `sharded_model`: that model under FSDP."""
    iter_num = checkpoint["iter_num"]
    best_val_loss = float(checkpoint["best_val_loss"])
    implementation = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    if checkpoint["optimizer"] is None:  # a model converted on resume: AdamW starts fresh
        pass  # (smallgpt/convert_attention.py; train.py drops the state that fit the old weights)
    elif sharded_model is not None:  # the full state of any run, each rank keeping its shards
        from smallgpt.distributed import load_optimizer_state
        load_optimizer_state(sharded_model, optimizer, checkpoint["optimizer"])
    else:
        fit_optimizer_state(checkpoint["optimizer"], optimizer)  # wpe rows added or cropped since
        optimizer.load_state_dict(checkpoint["optimizer"])
    for group, chosen in zip(optimizer.param_groups, implementation):
        group.update(chosen)  # the saved groups carry the saving run's choice; keep this run's
    if checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    streams.continue_from(checkpoint.get("rng"), rank, world_size, reseed=seed + rank + iter_num)
    return iter_num, best_val_loss


def fit_optimizer_state(opt_state, optimizer):
    """Fit a saved optimizer state (in place) to `optimizer`'s parameters when a parameter's
    first dimension changed since the save: wpe after resuming at another block_size. Rows
    that are new get zero Adam moments, the state of a parameter that was never updated;
    rows that are gone are dropped."""
    saved_ids = [i for group in opt_state["param_groups"] for i in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in zip(saved_ids, params):
        for key, t in opt_state["state"].get(i, {}).items():
            if not torch.is_tensor(t) or t.dim() != p.dim() or t.shape == p.shape \
                    or t.shape[1:] != p.shape[1:]:
                continue  # the step count, or a state that already fits
            if t.size(0) > p.size(0):
                opt_state["state"][i][key] = t[:p.size(0)].clone()
            else:
                pad = t.new_zeros((p.size(0) - t.size(0), *t.shape[1:]))
                opt_state["state"][i][key] = torch.cat([t, pad])  # (rows of p, ...)


def load_model(model_cls, init_from="resume", out_dir="out", checkpoint_name="ckpt.pt", device="cpu"):
    """The model to sample from or evaluate, in eval mode on `device`, with what came with it:
    (model, meta, config). `model_cls` is model.py's GPT: the caller hands it in, so this
    package never imports model.py.

    init_from='resume' reads out_dir/checkpoint_name: meta is the vocabulary saved in it (for a
    nanoGPT checkpoint, which has none, the meta of its dataset's folder), config the train.py
    settings it was trained with. Anything else goes to GPT.from_pretrained (gpt2*, a Hugging
    Face folder): meta None (GPT-2 BPE; a folder export.py wrote: the checkpoint's meta) and
    config None. Raises CheckpointError, or the
    OSError / ValueError / RuntimeError of from_pretrained, each a one-line message."""
    meta = config = None
    if init_from == "resume":
        ckpt_path = os.path.join(out_dir, resolve_name(checkpoint_name))
        ckpt = load_checkpoint(ckpt_path, device)
        model = model_cls.from_checkpoint(ckpt, dropout=0.0, path=ckpt_path)
        meta, config = ckpt.get("meta"), ckpt.get("config") or {}
        if meta is None and config.get("dataset"):  # nanoGPT: the vocabulary is in the data folder
            meta = load_meta(os.path.join(REPO, "data", config["dataset"]))
        del ckpt
    else:
        model = model_cls.from_pretrained(init_from, dict(dropout=0.0))
        if os.path.isdir(init_from):  # a folder export.py wrote carries the model's vocabulary
            meta = read_vocab_meta(init_from)
    model.eval()
    model.to(device)
    return model, meta, config
