"""
train.py under torchrun: the process group (restart-safe), and FSDP (parallel='fsdp'): shard a
GPT over the processes, and turn its sharded state back into the one checkpoint format (and a
checkpoint into sharded state).

    torchrun --standalone --nproc_per_node=2 train.py config/train_don_char.py --parallel=fsdp --compile=False

Sharding is PyTorch's FSDP2 (`fully_shard`): each Block is one unit, then the root (embeddings,
final LayerNorm and the tied lm_head). Each process keeps 1/N of every parameter, gradient and
AdamW moment; a unit's parameters are all-gathered just before its forward and its backward, and
its gradients are reduce-scattered. The math is DDP's: the same batches give the same losses.

Checkpoints stay a plain full state_dict (what sample.py, export.py, nanoGPT and a single
process read): at save time the shards are gathered into full tensors on rank 0's CPU, so
rank 0 briefly holds one full copy of the weights and the AdamW moments (3x the weights in
fp32) in host memory. On resume every rank reads that file and keeps its shards.
What this is not: sharded (per-rank) checkpoint files, CPU offload or hybrid sharding.
"""

import datetime
import os
import sys
import warnings

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard

# Block returns the keys/values it attended to (views, for the next layers of a kv_share group).
# FSDP2 warns that an in-place op on a returned view would skip its backward hook; GPT.forward
# only reads them, so the warning is noise on every step.
warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")


def init_process_group(backend, timeout_s=600):
    """dist.init_process_group from torchrun's environment, also after torchrun --max-restarts
    restarted the workers. torchrun keeps one store for all attempts while this torch's workers
    (TORCHELASTIC_USE_AGENT_STORE) write their keys into it unprefixed: the restarted ranks would
    read the dead attempt's addresses and hang or fail to connect. Each attempt's keys go under
    a prefix of its own instead.

    `timeout_s` (train.py's dist_timeout_s): how long a collective waits for the other ranks
    before it fails, instead of gloo's 30 minutes; then stop_on_lost_ranks says why in one line."""
    timeout = datetime.timedelta(seconds=timeout_s)
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    # torchrun sets it to True unless run with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              is_master=False, timeout=timeout)
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"attempt_{attempt}", store),
                                rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                                timeout=timeout)
    stop_on_lost_ranks(timeout_s)


def stop_on_lost_ranks(timeout_s):
    """A collective that fails because another rank died (gloo: "Connection closed by peer") or
    never came (a timeout) ends this rank with one line, not a traceback of gloo's internals:
    the rank that failed first printed the reason."""
    rank, previous_hook = dist.get_rank(), sys.excepthook

    def hook(kind, error, traceback):
        text = str(error)
        if isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and "gloo" in text):
            first = text.strip().splitlines()[0] if text.strip() else kind.__name__
            first = first.split("] ", 1)[-1][:160]  # gloo prefixes its source file and line
            print(f"error: rank {rank} lost the other processes ({first}); another rank stopped or "
                  f"is stuck: its output says why (collectives wait dist_timeout_s={timeout_s} s)",
                  file=sys.stderr)
            sys.exit(1)  # sys.exit in an excepthook ends the process with this code
        previous_hook(kind, error, traceback)

    sys.excepthook = hook


def rank0_decides(value):
    """Rank 0's `value` on every rank: a decision read from rank 0's disk (init_from='auto')."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def first_failure(error):
    """Every rank hands in its error (a one-line message, or None); every rank gets back the first
    failing rank's (rank, message), or None when all succeeded. Collective."""
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return next(((rank, message) for rank, message in enumerate(errors) if message), None)


def shard_model(model):
    """Shard `model` in place (a GPT): every Block, then the rest. The parameters become
    DTensors, so an optimizer must be made after this."""
    # start from rank 0's weights, as DDP does: each rank initialised its own (seed + rank)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor, src=0)
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)  # wte, wpe, ln_f and lm_head (tied to wte: one unit, as they must be)
    return model


def _names_in_order(model, optimizer):
    """The parameter names in the order optimizer.state_dict() numbers them (0, 1, ...)."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_state(model, optimizer):
    """(model state_dict, optimizer state_dict) as full CPU tensors on rank 0, in the format an
    unsharded model gives (optimizer state numbered by parameter position); ({}, {}) on the
    other ranks. Every rank must call this: the shards are gathered collectively."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    if not optim_state:  # not rank 0
        return {}, {}
    # lm_head is tied to wte: one tensor under both names, as in a plain state_dict (the
    # gathered copy would be saved twice)
    model_state["lm_head.weight"] = model_state["transformer.wte.weight"]
    index = {name: i for i, name in enumerate(_names_in_order(model, optimizer))}
    optim_state = {
        "state": {index[name]: state for name, state in optim_state["state"].items()},
        "param_groups": [dict(group, params=[index[name] for name in group["params"]])
                         for group in optim_state["param_groups"]],
    }
    return model_state, optim_state


def load_optimizer_state(model, optimizer, saved):
    """Load a full optimizer state_dict (numbered, as train.py saves it: from any number of
    processes, or nanoGPT) into the optimizer of the sharded `model`; each rank keeps its
    shards. Every rank must call this with the same `saved`."""
    names = _names_in_order(model, optimizer)
    by_name = {
        "state": {names[i]: state for i, state in saved["state"].items()},
        "param_groups": [dict(group, params=[names[i] for i in group["params"]])
                         for group in saved["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, optim_state_dict=by_name,
                             options=StateDictOptions(full_state_dict=True))
