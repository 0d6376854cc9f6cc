"""
Train a GPT: from scratch, from a checkpoint (resume) or from GPT-2 weights (finetune).

One process on a CPU, a GPU or Apple's MPS:
    python train.py config/train_don_char.py config/cpu_small.py
    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --max_iters=2000
Distributed data parallel, one process per GPU (or per CPU socket, with gloo):
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
    torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --master_addr=IP --master_port=1234 train.py
Sharded (FSDP), and restarted from last.pt when a process dies (README: Distributed training):
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py --parallel=fsdp --compile=False
    torchrun --standalone --nproc_per_node=8 --max-restarts=3 train.py config/train_gpt2.py --init_from=auto
A line dataset (one sample per line; README: Line datasets and tasks), with accuracy at each eval:
    python train.py config/train_add.py
Resume where a run stopped (exactly: same batches, same random numbers):
    python train.py config/train_don_char.py --init_from=resume --resume_checkpoint_name=last.pt
`python train.py --help` lists every setting below.
"""

import math
import os
import random
import shlex
import signal
import sys
import time

import numpy as np
import torch

# -----------------------------------------------------------------------------
# defaults (a config file in config/ or --key=value overrides any of these)
# I/O
out_dir = 'out'  # checkpoints, log.csv and loss.png go here
eval_interval = 2000  # iterations between evaluations of train/val loss
log_interval = 1  # iterations between printed (and logged) training losses
eval_iters = 200  # batches per split in each evaluation
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # write ckpt.pt at every eval, not only when val loss improves
checkpoint_interval = 0  # write last.pt every this many iterations (0 = at every eval)
init_from = 'scratch'  # 'scratch', 'resume', 'auto' (resume last.pt if out_dir has one, else scratch), 'gpt2*' or a local Hugging Face GPT-2/Starcoder2 folder
resume_checkpoint_name = 'ckpt.pt'  # which checkpoint init_from='resume' reads: ckpt.pt or last.pt
# logging (a CSV and a PNG plot are always written to out_dir)
wandb_log = False  # also log to Weights & Biases (WANDB_MODE=offline works)
wandb_project = 'owt'
wandb_run_name = 'gpt2'
tensorboard_log = False  # also write TensorBoard events to out_dir/tensorboard
# data
dataset = 'openwebtext'  # folder under data/ holding train.bin, val.bin (and meta.json)
gradient_accumulation_steps = 5 * 8  # micro-batches per optimizer step (summed over all ranks)
batch_size = 12  # sequences per micro-batch
block_size = 1024  # context length in tokens
data_order = 'random'  # 'random' windows, or 'sequential': each batch row continues its own stretch of text
xl_memory = 0  # tokens of the previous steps' keys/values each layer also sees (TransformerXL; needs 'sequential')
# line datasets (README: Line datasets): one line per window, padded; a plain text dataset has none
answer_separator = ''  # what ends a line's question, e.g. '=' ('' = the dataset's own, in meta.json)
loss_on = 'all'  # 'all': every token of a line but its first; 'answer': only what follows the separator
eval_accuracy = 0  # at every eval, exact-match accuracy of greedy answers on this many val lines
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # 0 for pretraining, try 0.1+ for finetuning
bias = False  # biases in Linear/LayerNorm layers
# attention variants (README: Attention variants); each default is GPT-2's attention. A resumed
# or GPT-2 model keeps its own: these only shape a model trained from scratch
pos_emb = 'learned'  # 'learned' (position table), 'rope' (rotary on q and k) or 'none'
rope_theta = 10000.0  # rotary base (pos_emb='rope' only)
n_kv_head = 0  # key/value heads: 0 = n_head, 1 = multi-query; must divide n_head
attn_window = 0  # tokens a windowed layer sees (0 = full causal attention)
window_pattern = ''  # per layer, repeated: S = windowed, L = full, e.g. 'SSSL' ('' = all S)
kv_share = 1  # neighbouring layers that share one set of keys/values (1 = none)
attention = 'softmax'  # 'softmax', or 'linear' (elu+1 kernel, a fixed-size state when generating)
# AdamW optimizer
learning_rate = 6e-4  # peak learning rate
max_iters = 600000  # total optimizer steps
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip the gradient norm to this (0 = off)
# learning rate schedule: linear warmup, cosine decay to min_lr, then flat
decay_lr = True  # False = constant learning_rate
warmup_iters = 2000
lr_decay_iters = 600000  # ~= max_iters per Chinchilla
min_lr = 6e-5  # ~= learning_rate/10 per Chinchilla
# distributed (torchrun; README: Distributed training)
backend = 'nccl'  # for CUDA; CPU runs always use gloo
parallel = 'ddp'  # 'ddp': a full copy per process; 'fsdp': parameters, gradients, AdamW state sharded
# system
device = 'auto'  # auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps
dtype = 'auto'  # auto, float32, bfloat16, float16 (float16 adds a GradScaler)
compile = True  # torch.compile the model (PyTorch 2)
fast_cpu = True  # CPU speed-ups that keep the math (README: Performance); False = nanoGPT's path
seed = 1337  # base random seed (each DDP rank adds its rank)
peak_flops = 0.0  # device peak FLOP/s for MFU; 0 = measure with a quick matmul at start
# -----------------------------------------------------------------------------
from configurator import configure, make_folder  # noqa: E402  (after the defaults)

# given: the keys a config file or --key=value set, e.g. block_size even when set to 1024. A
# block_size the user gave that is longer than a resumed or GPT-2 model's grows the model's
# context; left at its default, the model keeps its own
config, given = configure(globals(), return_given=True)
block_size_given = 'block_size' in given

from model import VARIANT_KEYS  # noqa: E402  (GPTConfig's variant fields)

from smallgpt.checkpoint import (CheckpointError, fit_optimizer_state, load_checkpoint, peek_checkpoint, remove_stale_temp_files, resolve_name, save_checkpoint)  # noqa: E402
from model import GPT, GPTConfig, XLMemory, set_fast_cpu  # noqa: E402
from smallgpt.device import (autocast_context, device_type_of, measure_peak_flops, note, pick_device, pick_dtype, reuse_freed_memory)  # noqa: E402
from smallgpt.errors import fail  # noqa: E402
from smallgpt.lines import LineDataset, is_line_dataset  # noqa: E402
from smallgpt.dataloader import (count_tokens, eval_offsets, load_meta, sample_batch, sequential_starts)  # noqa: E402

REPO = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- setup
for name in ('eval_interval', 'log_interval', 'eval_iters', 'gradient_accumulation_steps',
             'batch_size', 'block_size'):
    if globals()[name] < 1:
        fail(f"{name}={globals()[name]} must be at least 1")
if eval_accuracy < 0:
    fail(f"eval_accuracy={eval_accuracy} can't be negative (0 = off)")
if data_order not in ('random', 'sequential'):
    fail(f"data_order={data_order!r}: use 'random' or 'sequential'")
if xl_memory < 0 or (xl_memory and data_order != 'sequential'):
    fail(f"xl_memory={xl_memory} carries keys/values from one step to the next, so it needs "
         f"--data_order=sequential (and xl_memory >= 0)")
if checkpoint_interval < 0 or max_iters < 0:
    fail(f"checkpoint_interval={checkpoint_interval} and max_iters={max_iters} can't be negative")
if parallel not in ('ddp', 'fsdp'):
    fail(f"parallel={parallel!r}: use 'ddp' or 'fsdp'")
if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    fail(f"--out_dir={out_dir} is a file, not a folder; pass another --out_dir")

# ----------------------------------------------------------------------------- data files
# checked before any process group or device is set up: a mistake here is one line, at once
# a name under data/ (nanoGPT's way), else a folder path (relative to here, or absolute)
data_dir = os.path.join(REPO, 'data', dataset)
if not os.path.isdir(data_dir) and os.path.isdir(dataset):
    data_dir = dataset
prepare = os.path.join('data', dataset, 'prepare.py')
has_prepare = os.path.isfile(os.path.join(REPO, prepare))
if os.path.isfile(dataset):
    fail(f"--dataset={dataset} is a file; --dataset takes a prepared folder (train.bin, val.bin) "
         f"or a name under data/. For a text file: python data/don_char/prepare.py "
         f"--input={dataset}, then --dataset=don_char")
for split in ('train', 'val'):
    if not os.path.isfile(os.path.join(data_dir, f'{split}.bin')):
        fail(f"dataset {dataset!r} has no {split}.bin in {data_dir}; " +
             (f"run: python {prepare}" if has_prepare else
              "prepare it first (ls data/ lists the datasets that ship a prepare.py)"))
try:
    meta = load_meta(data_dir)
except ValueError as e:
    fail(e)
token_dtype = np.dtype(meta['dtype'] if meta else 'uint16')
try:
    split_tokens = {split: count_tokens(os.path.join(data_dir, f'{split}.bin'), token_dtype)
                    for split in ('train', 'val')}
except ValueError as e:
    fail(f"{e}" + (f": python {prepare}" if has_prepare else " with the script that made it"))
line_data = None  # a line dataset (smallgpt/lines.py): one line per window, padded to block_size
if is_line_dataset(meta):
    try:
        line_data = LineDataset(data_dir, meta, splits=('train', 'val'))
        line_data.set_targets(loss_on, answer_separator)
    except ValueError as e:
        fail(e)
    if eval_accuracy and not line_data.separator:
        fail(f"eval_accuracy needs an answer separator and {dataset!r} has none: pass "
             f"--answer_separator (e.g. '=')")
    if data_order == 'sequential':
        fail(f"data_order='sequential' reads running text, and {dataset!r} is a line dataset "
             f"(one sample per line, no text runs on); use data_order='random'")
elif loss_on != 'all' or answer_separator or eval_accuracy:
    fail(f"loss_on, answer_separator and eval_accuracy work on line datasets, and {dataset!r} is "
         f"plain text; make one with: python data/charline/prepare.py --input=lines.txt")

# ----------------------------------------------------------------------------- processes, device, dtype
ddp = int(os.environ.get('RANK', -1)) != -1  # started by torchrun (whichever `parallel`)
fsdp = ddp and parallel == 'fsdp'
if parallel == 'fsdp' and not ddp:
    note("parallel='fsdp' without torchrun: one process holds everything, trained as usual")
if fsdp and compile:
    fail("parallel='fsdp' with compile=True is not supported here yet; pass --compile=False")
if fsdp and dtype == 'float16':
    fail("parallel='fsdp' with dtype='float16' (a GradScaler) is not supported; pass "
         "--dtype=bfloat16 or --dtype=float32")
try:
    device = pick_device(device)
except ValueError as e:
    fail(e)
device_type = device_type_of(device)
if ddp:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    ddp_rank = int(os.environ['RANK'])
    ddp_local_rank = int(os.environ['LOCAL_RANK'])
    ddp_world_size = int(os.environ['WORLD_SIZE'])
    if device_type == 'cuda':
        device = f'cuda:{ddp_local_rank}'
        torch.cuda.set_device(device)
    elif backend == 'nccl':
        backend = 'gloo'  # nccl is GPU-only
    from smallgpt.distributed import init_process_group
    init_process_group(backend)
    master_process = ddp_rank == 0
    seed_offset = ddp_rank
    if gradient_accumulation_steps % ddp_world_size != 0:
        fail(f"gradient_accumulation_steps={gradient_accumulation_steps} is not divisible by the "
             f"{ddp_world_size} processes; use a multiple of {ddp_world_size}")
    gradient_accumulation_steps //= ddp_world_size  # this rank's share of the global batch
else:
    ddp_rank, ddp_world_size, master_process, seed_offset = 0, 1, True, 0

try:
    dtype = pick_dtype(dtype, device_type, quiet=not master_process)
except ValueError as e:
    fail(e)
if master_process:
    print(f"device {device}, dtype {dtype}, {ddp_world_size} process(es)")
    try:
        make_folder(out_dir, 'out_dir')
    except ValueError as e:
        fail(e)
    for name in remove_stale_temp_files(out_dir):
        note(f"removed {os.path.join(out_dir, name)}, left by a run killed while saving a checkpoint")
torch.manual_seed(seed + seed_offset)
if device_type == 'cpu' and fast_cpu:
    reuse_freed_memory()  # glibc would hand freed activations back to the kernel every step
if device_type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: fast, accurate enough
    torch.backends.cudnn.allow_tf32 = True
ctx = autocast_context(device_type, dtype)

# ----------------------------------------------------------------------------- batches

def get_batch(split, offsets):
    """The windows of block_size + 1 tokens starting at `offsets` (line numbers for a line
    dataset): inputs and next-token targets."""
    if line_data is not None:  # one line per window
        x, y = line_data.batch(split, len(offsets), block_size, line_indices=offsets)  # (B, T) each
    else:
        x, y = sample_batch(os.path.join(data_dir, f'{split}.bin'), token_dtype, len(offsets),
                            block_size, offsets=offsets)  # (B, T) each
    if device_type == 'cuda':  # pinned memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# The training sampler has its own generator so its position can be saved and resumed exactly.
# It is one global stream, seeded alike on every rank: each optimizer step draws the whole
# global batch and each rank keeps its share, so 1 process x 4 micro-batches, 2 x 2 and 4 x 1
# train on the same windows (README: Distributed training).
train_generator = torch.Generator().manual_seed(seed)
# TransformerXL (xl_memory > 0): one memory per micro-batch of this rank, since with sequential
# batches micro-batch m holds the same rows at every step
xl_memories = [XLMemory(xl_memory) for _ in range(gradient_accumulation_steps)] if xl_memory else []


def next_micro_batches():
    """Where this rank's micro-batches of the next optimizer step start: every rank draws all
    gradient_accumulation_steps x world size micro-batches of the step (batch_size window
    starts each; line numbers for a line dataset) and keeps every world-size-th, from its rank.
    data_order='sequential': the global batch's rows are sequential_starts' rows for this step,
    in order, cut into micro-batches the same way; at the wrap the XL memories are emptied."""
    n_micro = gradient_accumulation_steps * ddp_world_size
    if data_order == 'sequential':  # row g of the global batch continues its own stretch
        starts, wrapped = sequential_starts(split_tokens['train'], n_micro * batch_size,
                                            block_size, iter_num)
        if wrapped:  # every row starts its stretch over: what XL remembers no longer precedes it
            for memory in xl_memories:
                memory.reset()
        draws = [starts[m * batch_size:(m + 1) * batch_size] for m in range(n_micro)]
        return draws[ddp_rank::ddp_world_size]
    n = len(line_data.splits['train']) if line_data is not None else \
        split_tokens['train'] - block_size  # the last start that leaves a whole window
    draws = [torch.randint(n, (batch_size,), generator=train_generator).tolist()
             for _ in range(n_micro)]
    return draws[ddp_rank::ddp_world_size]

# ----------------------------------------------------------------------------- model
iter_num = 0
best_val_loss = float('inf')
checkpoint = None
vocab_size = meta['vocab_size'] if meta else None
if init_from == 'auto':
    # for restarts (torchrun --max-restarts, a preempted job run again): the same command line
    # starts a run the first time and continues it from its last.pt every time after
    if os.path.isfile(os.path.join(out_dir, 'last.pt')):
        init_from, resume_checkpoint_name = 'resume', 'last.pt'
    else:
        init_from = 'scratch'
    if master_process:
        print("init_from='auto': " + ("resuming from last.pt" if init_from == 'resume'
                                      else "no last.pt yet, starting from scratch"))
if init_from == 'scratch':
    if master_process and vocab_size is None:
        print("no meta.json in the dataset: assuming GPT-2's vocabulary (50304 = 50257 padded)")
    model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                      bias=bias, vocab_size=vocab_size or 50304, dropout=dropout, pos_emb=pos_emb,
                      rope_theta=rope_theta, n_kv_head=n_kv_head, attn_window=attn_window,
                      window_pattern=window_pattern, kv_share=kv_share, attention=attention)
    try:
        model = GPT(GPTConfig(**model_args))
    except ValueError as e:
        fail(e)
elif init_from == 'resume':
    ckpt_path = os.path.join(out_dir, resolve_name(resume_checkpoint_name))
    try:
        checkpoint = load_checkpoint(ckpt_path, device)
        model = GPT.from_checkpoint(checkpoint, dropout=dropout, path=ckpt_path)
    except CheckpointError as e:
        fail(e)
    iter_num = checkpoint['iter_num']
    best_val_loss = float(checkpoint['best_val_loss'])
    if master_process:
        print(f"resuming from {ckpt_path} at iteration {iter_num} (best val loss {best_val_loss:.4f})")
elif init_from.startswith('gpt2') or os.path.isdir(init_from) or '/' in init_from:
    if meta and meta.get('tokenizer') == 'char':
        fail(f"dataset {dataset!r} is character-level, but {init_from} expects GPT-2 BPE tokens; "
             f"use a BPE dataset such as data/don (python data/don/prepare.py)")
    try:
        model = GPT.from_pretrained(init_from, dict(dropout=dropout))
    except (OSError, ValueError, RuntimeError) as e:
        fail(e)
    if master_process:  # a Starcoder2 folder loads as a rotary model (smallgpt/hf/starcoder2.py)
        kind = 'Starcoder2' if model.config.pos_emb == 'rope' else 'GPT-2'
        print(f"initializing from {kind} weights: {init_from}")
else:
    fail(f"init_from={init_from!r}: use 'scratch', 'resume', gpt2/gpt2-medium/gpt2-large/gpt2-xl "
         f"or the path of a local Hugging Face GPT-2 or Starcoder2 folder")
if init_from != 'scratch' and master_process:
    # the architecture comes from the checkpoint or the weights; say so when a variant setting
    # asked for something else, rather than train a model the user did not ask for in silence
    ignored = [k for k in VARIANT_KEYS if k in given and config[k] != getattr(model.config, k)]
    if ignored:
        asked = ', '.join(f"{k}={config[k]!r}" for k in ignored)
        kept = ', '.join(f"{k}={getattr(model.config, k)!r}" for k in ignored)
        note(f"{asked} ignored: the model from {init_from} keeps its own {kept} (these "
             f"settings shape a model trained from scratch)")
if vocab_size is not None and vocab_size > model.config.vocab_size:
    fail(f"dataset vocabulary ({vocab_size}) is larger than the model's ({model.config.vocab_size})")
if block_size < model.config.block_size:
    model.crop_block_size(block_size)  # e.g. GPT-2's 1024 positions cut down to 256
elif block_size > model.config.block_size and not block_size_given:
    # block_size left at its default: a resumed or GPT-2 model keeps its own context length
    if master_process:
        note(f"block_size={block_size} (the default) is more than the model's "
             f"{model.config.block_size} positions: training with block_size="
             f"{model.config.block_size}; pass --block_size to train at a longer context")
    block_size = model.config.block_size
elif block_size > model.config.block_size:
    if master_process and model.config.pos_emb == 'learned':
        note(f"block_size={block_size} is more than the model's {model.config.block_size} learned "
             f"positions: {block_size - model.config.block_size} new rows of wpe start as the mean "
             f"learned row plus noise, and train from there")
    # the same new rows on every DDP rank (the seed, not seed + rank)
    model.extend_block_size(block_size, torch.Generator().manual_seed(seed))
tokens_per_iter = gradient_accumulation_steps * ddp_world_size * batch_size * block_size
if master_process:  # printed here, once block_size is final
    micro_batches = gradient_accumulation_steps * ddp_world_size
    print(f"tokens per iteration: {tokens_per_iter:,} ({micro_batches} micro-batch"
          f"{'es' if micro_batches > 1 else ''} of {batch_size} x {block_size} tokens)")
if line_data is not None:
    try:
        line_data.check_block_size(block_size)
    except ValueError as e:
        fail(e)
for split, n_tokens in split_tokens.items():
    if n_tokens <= block_size and line_data is None:  # a window of a line dataset is one line
        fail(f"{split}.bin of {dataset!r} has {n_tokens} tokens, not more than block_size="
             f"{block_size}; use a smaller --block_size or more text")
    if data_order == 'sequential':
        rows = batch_size * (gradient_accumulation_steps * ddp_world_size if split == 'train' else 1)
        try:
            sequential_starts(n_tokens, rows, block_size, 0)
        except ValueError as e:
            fail(f"{split}.bin: {e}")
if xl_memory and (model.config.pos_emb == 'learned' or model.config.attention == 'linear'):
    fail(f"xl_memory needs relative positions and softmax attention, and this model has "
         f"pos_emb={model.config.pos_emb!r}, attention={model.config.attention!r}; train with "
         f"--pos_emb=rope (or none) and --attention=softmax")
model_args = model.config.to_model_args()
if master_process and init_from != 'resume':
    # nanoGPT overwrites an out_dir's checkpoints without a word; keep the overwrite, say it first
    found = [n for n in ('ckpt.pt', 'last.pt') if os.path.isfile(os.path.join(out_dir, n))]
    old = peek_checkpoint(os.path.join(out_dir, found[0])) if found else None
    if found:
        changes = []
        if old is not None:
            old_dataset = (old['config'] or {}).get('dataset')
            if old_dataset is not None and old_dataset != dataset:
                changes.append(f"dataset {old_dataset} -> {dataset}")
            changes += [f"{k} {v} -> {model_args.get(k)}" for k, v in (old['model_args'] or {}).items()
                        if k != 'dropout' and v != model_args.get(k)]
        what = (f"iteration {old['iter_num']}" if old else "unreadable") + \
            (f"; {', '.join(changes)}" if changes else "")
        print(f"warning: {out_dir} holds {' and '.join(found)} of an earlier run ({what}); this new "
              f"run replaces them at its first checkpoint. Use another --out_dir to keep them, or "
              f"--init_from=resume to continue that run", file=sys.stderr)
model.to(device)
set_fast_cpu(model, fast_cpu)
if fsdp:  # before the optimizer: sharding turns the parameters into DTensors
    from smallgpt.distributed import full_state, load_optimizer_state, shard_model
    shard_model(model)

scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type,
                                       fused=fast_cpu or device_type != 'cpu')
if checkpoint is not None:
    implementation = [{k: g.get(k) for k in ('fused', 'foreach')} for g in optimizer.param_groups]
    fit_optimizer_state(checkpoint['optimizer'], optimizer)  # wpe rows added or cropped above
    if fsdp:  # the full state of any run, each rank keeping its shards
        load_optimizer_state(model, optimizer, checkpoint['optimizer'])
    else:
        optimizer.load_state_dict(checkpoint['optimizer'])
    for group, chosen in zip(optimizer.param_groups, implementation):
        group.update(chosen)  # the saved groups carry the saving run's choice; keep this run's
    if 'scaler' in checkpoint and checkpoint['scaler']:
        scaler.load_state_dict(checkpoint['scaler'])

raw_model = model
if compile:
    if master_process:
        print("compiling the model with torch.compile (takes a minute; --compile=False skips it)")
    model = torch.compile(model)
if ddp and not fsdp:
    model = DDP(model, device_ids=[ddp_local_rank] if device_type == 'cuda' else None)

if peak_flops <= 0 and master_process:
    peak_flops = measure_peak_flops(device, dtype, size=4096 if device_type == 'cuda' else 1024)
    print(f"measured {dtype} matmul peak: {peak_flops / 1e9:,.0f} GFLOP/s (MFU is relative to it)")


# ----------------------------------------------------------------------------- helpers
def get_lr(it):
    """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return min_lr + coeff * (learning_rate - min_lr)


@torch.no_grad()
def estimate_loss():
    """Mean loss per split over eval_iters batches whose windows are spread evenly over the
    whole split: the same windows at every eval, so successive evals compare like with like,
    with less noise than random windows, and the training random stream is untouched. Under
    torchrun each rank takes every world_size-th batch and the sums are added up, so the result
    is the same for any number of processes."""
    model.eval()
    sums = torch.zeros(4, device=device)  # train loss sum, train batches, val loss sum, val batches
    for s, split in enumerate(('train', 'val')):
        if data_order == 'sequential':
            sums[2 * s:2 * s + 2] += sequential_loss(split)
            continue
        path = os.path.join(data_dir, f'{split}.bin')
        n_windows = eval_iters * batch_size
        offsets = line_data.eval_lines(split, n_windows) if line_data is not None else \
            eval_offsets(path, token_dtype, n_windows, block_size)
        batches = list(range(eval_iters)[ddp_rank::ddp_world_size])
        if fsdp:  # a forward of a sharded model is collective: every rank runs as many, the
            # extra ones (-1: batch 0 again, not counted) where eval_iters doesn't divide evenly
            batches += [-1] * (-(-eval_iters // ddp_world_size) - len(batches))
        if master_process and eval_iters >= 50:
            from tqdm import tqdm
            batches = tqdm(batches, desc=f"eval {split}", leave=False, delay=2.0)  # only if slow
        for i in batches:
            j = max(i, 0)
            X, Y = get_batch(split, offsets=offsets[j * batch_size:(j + 1) * batch_size])
            with ctx:
                _, loss = model(X, Y)
            sums[2 * s] += loss.float() * (i >= 0)
            sums[2 * s + 1] += i >= 0
    if ddp:  # every rank evaluated different batches: add them up, and agree on the result
        dist.all_reduce(sums)
    out = {'train': (sums[0] / sums[1]).item(), 'val': (sums[2] / sums[3]).item()}
    model.train()
    return out


def sequential_loss(split):
    """data_order='sequential': (loss sum, batches) over eval_iters batches read in order, each of
    batch_size rows continuing its own stretch of the split, the XL memory (if any) carried from
    one batch to the next as in training, from empty. Every rank computes all of it (the memory
    needs the batches in order); the all_reduce then scales both sums alike."""
    memory = XLMemory(xl_memory) if xl_memory else None
    total = torch.zeros(2, device=device)
    for i in range(eval_iters):
        starts, wrapped = sequential_starts(split_tokens[split], batch_size, block_size, i)
        if wrapped and memory is not None:
            memory.reset()
        X, Y = get_batch(split, offsets=starts)
        with ctx:
            _, loss = model(X, Y, memory=memory) if memory is not None else model(X, Y)
        total += torch.stack([loss.float(), torch.ones((), device=device)])
    return total


accuracy_lines = line_data.lines('val', eval_accuracy) if eval_accuracy else []


def measure_accuracy():
    """Exact-match accuracy of the greedy answers to the first eval_accuracy val lines (rank 0
    only, or every rank under FSDP, where a forward needs all ranks to gather the weights; greedy
    decoding draws no random numbers, so the run's random streams are untouched)."""
    from smallgpt.metrics import line_accuracy
    return line_accuracy(raw_model, line_data.tokenizer, accuracy_lines, line_data.separator,
                         meta['lines']['end_of_line'], ctx=ctx)['accuracy']


def rng_state():
    np_state = np.random.get_state()
    return {
        'python': random.getstate(),
        'numpy': (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if device_type == 'cuda' else [],
        'sampler': train_generator.get_state(),
        'xl_memory': [memory.state_dict() for memory in xl_memories],  # this rank's, for exact resume
    }


def set_rng_state(state):
    random.setstate(state['python'])
    kind, keys, *rest = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state['torch'])
    if device_type == 'cuda' and state['cuda']:
        torch.cuda.set_rng_state_all(state['cuda'])
    train_generator.set_state(state['sampler'])
    saved_memory = state.get('xl_memory') or []
    if xl_memories and len(saved_memory) == len(xl_memories) \
            and all(m['size'] == xl_memory for m in saved_memory):
        for memory, saved in zip(xl_memories, saved_memory):
            memory.load_state_dict(saved, device)
    elif xl_memories and master_process:
        note(f"the checkpoint holds no XL memory of {xl_memory} tokens for these micro-batches: "
             f"training continues from an empty memory")


def save(name, state):
    path = os.path.join(out_dir, name)
    save_checkpoint({
        'model': state['model'],
        'optimizer': state['optimizer'],
        'scaler': scaler.state_dict() if scaler.is_enabled() else None,
        'model_args': model_args,
        'iter_num': iter_num,
        'best_val_loss': best_val_loss,
        'config': config,
        'meta': meta,  # the vocabulary, so sample.py works without the data folder
        'rng': state['rng'],  # one entry per rank
        'world_size': ddp_world_size,
    }, path)
    print(f"saved {path} (iteration {iter_num})")


def gather_state():
    """What rank 0 saves: the model and optimizer state (under FSDP gathered from the shards
    into full tensors) and every rank's random state. All ranks must call this."""
    if fsdp:
        model_state, optimizer_state = full_state(raw_model, optimizer)
    else:
        model_state, optimizer_state = raw_model.state_dict(), optimizer.state_dict()
    states = [None] * ddp_world_size
    if ddp:
        dist.all_gather_object(states, rng_state())
    else:
        states[0] = rng_state()
    return {'model': model_state, 'optimizer': optimizer_state, 'rng': states}


def resume_command():
    """This run's command line, quoted for a shell, with init_from=resume from last.pt; under
    torchrun the torchrun line for as many nodes and processes (node 0's, where rank 0 runs)."""
    args = [a for a in sys.argv[1:]
            if not a.startswith(('--init_from=', '--resume_checkpoint_name='))]
    launcher = ['python']
    if ddp:
        per_node = int(os.environ.get('LOCAL_WORLD_SIZE', ddp_world_size))
        nodes = ddp_world_size // per_node
        launcher = ['torchrun', '--standalone'] if nodes == 1 else \
            ['torchrun', f'--nnodes={nodes}', '--node_rank=0',
             f"--master_addr={os.environ['MASTER_ADDR']}", f"--master_port={os.environ['MASTER_PORT']}"]
        launcher.append(f'--nproc_per_node={per_node}')
        restarts = int(os.environ.get('TORCHELASTIC_MAX_RESTARTS', 0))
        if restarts:
            launcher.append(f'--max-restarts={restarts}')
    command = shlex.join([*launcher, sys.argv[0], *args, '--init_from=resume',
                          '--resume_checkpoint_name=last.pt'])
    if ddp and nodes > 1:
        command += "\n  (and on each other node the same with its --node_rank)"
    return command


def diverged():
    """True when a loss summed since the last printed one, or any weight, is NaN/inf on any rank.
    Checked before every checkpoint write (one pass over the weights, only then), so a diverged
    run never replaces a good checkpoint, even when log_interval hides the bad loss for a while.
    All ranks must call it."""
    bad = not bool(torch.isfinite(loss_sum)) or \
        not all(bool(torch.isfinite(p.to_local() if fsdp else p).all()) for p in params)
    flag = torch.tensor([float(bad)], device=device)
    if ddp:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() > 0


def report_divergence(detail=''):
    if not master_process:
        return
    where = f"at iteration {iter_num}" if iter_num - last_finite_iter <= 1 else \
        f"between iterations {last_finite_iter + 1} and {iter_num}"
    print(f"error: the loss is not finite {where}{detail}; training stopped and no checkpoint "
          f"was written over the last good ones in {out_dir}. Try a lower learning_rate (now "
          f"{learning_rate}), grad_clip=1.0, or dtype=bfloat16/float32 instead of float16",
          file=sys.stderr)


# Ctrl+C (SIGINT) or a scheduler's SIGTERM: finish the step, write last.pt, exit 130.
stop_requested = False
first_signal_time = 0.0


def request_stop(signum, frame):
    global stop_requested, first_signal_time
    if stop_requested:
        # Ctrl+C reaches torchrun's workers twice: from the terminal, and forwarded by torchrun
        # a moment later. Only a second press (or signal) counts
        if ddp and time.monotonic() - first_signal_time < 1.0:
            return
        print("\nsecond interrupt: exiting now without saving", file=sys.stderr)
        os._exit(130)
    stop_requested, first_signal_time = True, time.monotonic()
    if master_process:
        print("\ninterrupt: finishing this step, then writing last.pt "
              "(press Ctrl+C again to quit at once)", file=sys.stderr)


signal.signal(signal.SIGINT, request_stop)
signal.signal(signal.SIGTERM, request_stop)

if checkpoint is not None:
    saved = checkpoint.get('rng')
    if saved and len(saved) == ddp_world_size:
        set_rng_state(saved[ddp_rank])
    elif saved:
        # the batch stream is global, so it continues exactly; dropout draws are per process
        train_generator.set_state(saved[0]['sampler'])
        torch.manual_seed(seed + seed_offset + iter_num)
        if master_process:
            note(f"the checkpoint was saved by {len(saved)} process(es), this run has "
                 f"{ddp_world_size}: batches continue exactly, dropout masks from a new seed" +
                 (", the XL memory from empty (each rank now holds other rows)" if xl_memory else ""))
    elif master_process:
        note("the checkpoint has no random state (a nanoGPT checkpoint): batches and dropout "
             "continue from a fresh seed")
    checkpoint = None  # free the memory

runlog = None
if master_process:
    from smallgpt.runlog import RunLog
    runlog = RunLog(out_dir, config, resume_iter=iter_num if init_from == 'resume' else None,
                    tensorboard=tensorboard_log, wandb=wandb_log, wandb_project=wandb_project,
                    wandb_run_name=wandb_run_name)

# ----------------------------------------------------------------------------- training loop
last_iter = max_iters
if iter_num >= max_iters and not eval_only:
    eval_only = True  # e.g. --init_from=resume --max_iters=0: just report the losses
checkpoint_every = checkpoint_interval or eval_interval
start_iter = iter_num
last_finite_iter = iter_num  # the last iteration whose loss (or eval) was seen to be finite
loss_sum = torch.zeros((), device=device)  # summed on the device; read only at log_interval
t0 = time.time()
iters_since_log = 0
running_mfu = -1.0
params = list(raw_model.parameters())  # listed once: walking the modules each step costs ~0.1 ms
flops_per_iter = raw_model.flops_per_token() * block_size * batch_size * gradient_accumulation_steps
exit_code = 0
while True:
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for group in optimizer.param_groups:
        group['lr'] = lr

    if iter_num % eval_interval == 0 or iter_num == last_iter or eval_only:
        losses = estimate_loss()
        if not (math.isfinite(losses['train']) and math.isfinite(losses['val'])):
            report_divergence(f" (evaluated train loss {losses['train']}, val loss {losses['val']})")
            exit_code = 3
            break
        last_finite_iter = iter_num
        # under FSDP every rank decodes: a forward of a sharded model is collective
        accuracy = measure_accuracy() if eval_accuracy and (master_process or fsdp) else None
        if master_process:
            shown = f", val accuracy {accuracy:.2%}" if accuracy is not None else ""
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{shown}")
            runlog.eval(iter_num, losses['train'], losses['val'], lr, accuracy)
        improved = losses['val'] < best_val_loss
        best_val_loss = min(best_val_loss, losses['val'])  # only ever goes down, even on resume
        if not eval_only and iter_num > start_iter and (improved or always_save_checkpoint):
            if diverged():
                report_divergence()
                exit_code = 3
                break
            state = gather_state()
            if master_process:
                save('ckpt.pt', state)
    if eval_only:
        break
    if iter_num > start_iter and (iter_num % checkpoint_every == 0 or iter_num >= last_iter):
        if diverged():
            report_divergence()
            exit_code = 3
            break
        state = gather_state()
        if master_process:
            save('last.pt', state)
    if iter_num >= last_iter:
        break

    # one optimizer step over gradient_accumulation_steps micro-batches
    micro_batches = next_micro_batches()
    X, Y = get_batch('train', offsets=micro_batches[0])
    for micro_step in range(gradient_accumulation_steps):
        # sync gradients only on the last micro-step; the others just accumulate
        if fsdp:
            model.set_requires_gradient_sync(micro_step == gradient_accumulation_steps - 1)
        elif ddp:
            model.require_backward_grad_sync = (micro_step == gradient_accumulation_steps - 1)
        with ctx:
            if xl_memories:  # this micro-batch's rows continue where they stopped last step
                logits, loss = model(X, Y, memory=xl_memories[micro_step])
            else:
                logits, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps  # the sum over micro-steps is the mean
        if micro_step < gradient_accumulation_steps - 1:
            X, Y = get_batch('train', offsets=micro_batches[micro_step + 1])  # during backward
        scaler.scale(loss).backward()
        loss_sum += loss.detach()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1
    iters_since_log += 1

    nonfinite = False
    if iter_num % log_interval == 0:
        if ddp:  # the global batch's mean, not this rank's share of it
            dist.all_reduce(loss_sum)
            loss_sum /= ddp_world_size
        lossf = loss_sum.item() / iters_since_log  # the only host sync of a step
        loss_sum.zero_()
        nonfinite = not math.isfinite(lossf)
        if not nonfinite:
            last_finite_iter = iter_num
        dt = (time.time() - t0) / iters_since_log
        t0 = time.time()
        if master_process and not nonfinite:
            if iter_num - start_iter >= 5:  # let the first iterations (warm-up, compile) pass
                # per process: peak_flops is one device's, and each rank does its share
                mfu = flops_per_iter / dt / peak_flops  # raw_model.estimate_mfu, counted once
                running_mfu = mfu if running_mfu < 0 else 0.9 * running_mfu + 0.1 * mfu
            tokens_per_s = tokens_per_iter / dt
            mfu_text = f", mfu {running_mfu * 100:.1f}%" if running_mfu >= 0 else ""
            print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, "
                  f"{tokens_per_s:,.0f} tok/s{mfu_text}")
            runlog.train(iter_num, lossf, lr, dt * 1000, tokens_per_s,
                         running_mfu if running_mfu >= 0 else None)
        iters_since_log = 0
    stop, bad = stop_requested, nonfinite
    if ddp:  # all ranks must stop at the same step, or the others wait forever in all_reduce
        flags = torch.tensor([float(stop), float(bad)], device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop, bad = (v > 0 for v in flags.tolist())
    if bad or (stop and diverged()):
        report_divergence()
        exit_code = 3
        break
    if stop:
        state = gather_state()
        if master_process:
            save('last.pt', state)
            print(f"stopped at iteration {iter_num}. To resume:\n  {resume_command()}")
        exit_code = 130
        break

if runlog is not None:
    runlog.close()
if ddp:
    # wait for rank 0's last save: a rank that tears gloo down while rank 0 is still writing
    # can abort at exit ("terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()
sys.exit(exit_code)
