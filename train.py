"""
Train a GPT: from scratch, from a checkpoint (resume) or from GPT-2 weights (finetune).

One process on a CPU, a GPU or Apple's MPS:
    python train.py config/train_don_char.py config/cpu_small.py
    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --max_iters=2000
Distributed data parallel, one process per GPU (or per CPU socket, with gloo):
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
    torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --master_addr=IP --master_port=1234 train.py
Sharded (FSDP), and restarted from last.pt when a process dies (docs/distributed.md):
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py --parallel=fsdp --compile=False
    torchrun --standalone --nproc_per_node=8 --max-restarts=3 train.py config/train_gpt2.py --init_from=auto
A line dataset (one sample per line; docs/lines.md), with accuracy at each eval:
    python train.py config/train_add.py
Resume where a run stopped (exactly: same batches, same random numbers):
    python train.py config/train_don_char.py --init_from=resume --resume_checkpoint_name=last.pt
`python train.py --help` lists every setting below.

This file is the defaults, the setup as a few named steps (smallgpt/runsetup.py), then the loop.
The loop's pieces: batches (smallgpt/dataloader.py Batches), the schedule, random streams, stop
signal and divergence check (smallgpt/runstate.py), what a checkpoint holds (smallgpt/checkpoint.py).
"""

import contextlib
import math
import os
import sys
import time

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
sample_interval = 0  # print a sample every this many iterations and add it to out_dir/samples.txt (0 = off)
sample_start = ''  # the samples' start text ('' = a line dataset's first val question, else a newline)
sample_max_new_tokens = 50  # tokens per sample at most (a line dataset's stops at its line's end)
sample_temperature = 0.0  # 0 = greedy; a sample draws none of the run's random numbers
# data
dataset = 'openwebtext'  # folder under data/ holding train.bin, val.bin (and meta.json)
gradient_accumulation_steps = 5 * 8  # micro-batches per optimizer step (summed over all ranks)
batch_size = 12  # sequences per micro-batch
block_size = 1024  # context length in tokens
data_order = 'random'  # 'random' windows, or 'sequential': each batch row continues its own stretch of text
xl_memory = 0  # tokens of the previous steps' keys/values each layer also sees (TransformerXL; needs 'sequential')
# line datasets (docs/lines.md): one line per window, padded; a plain text dataset has none
answer_separator = ''  # what ends a line's question, e.g. '=' ('' = the dataset's own, in meta.json)
loss_on = 'all'  # 'all': every token of a line but its first; 'answer': only what follows the separator
eval_accuracy = 0  # at every eval, exact-match accuracy of greedy answers on this many val lines
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # 0 for pretraining, try 0.1+ for finetuning
bias = False  # biases in Linear/LayerNorm layers
# attention variants (docs/attention.md); each default is GPT-2's attention. A resumed
# or GPT-2 model keeps its own, except that n_kv_head (fewer), attn_window, window_pattern and
# kv_share convert its weights (docs/tutorial_exercises.md)
pos_emb = 'learned'  # 'learned' (position table), 'rope' (rotary on q and k) or 'none'
rope_theta = 10000.0  # rotary base (pos_emb='rope' only)
n_kv_head = 0  # key/value heads: 0 = n_head, 1 = multi-query; must divide n_head
attn_window = 0  # tokens a windowed layer sees (0 = full causal attention)
window_pattern = ''  # per layer, repeated: S = windowed, L = full, e.g. 'SSSL' ('' = all S)
kv_share = 1  # neighbouring layers that share one set of keys/values (1 = none)
attention = 'softmax'  # 'softmax', or 'linear' (elu+1 kernel, a fixed-size state when generating)
kv_pool = 'auto'  # converting K/V heads or kv_share: 'mean' or 'first'; 'auto' = mean for heads, first for layers
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
# distributed (torchrun; docs/distributed.md)
backend = 'nccl'  # for CUDA; CPU runs always use gloo
parallel = 'ddp'  # 'ddp': a full copy per process; 'fsdp': parameters, gradients, AdamW state sharded
dist_timeout_s = 600  # seconds a collective waits for the other ranks before the run stops (torchrun)
# system
device = 'auto'  # auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps
dtype = 'auto'  # auto, float32, bfloat16, float16 (float16 adds a GradScaler)
compile = True  # torch.compile the model (PyTorch 2)
fast_cpu = True  # CPU speed-ups that keep the math (docs/performance.md); False = nanoGPT's path
seed = 1337  # base random seed (each DDP rank adds its rank)
peak_flops = 0.0  # device peak FLOP/s for MFU; 0 = measure with a quick matmul (once per machine, then cached)
# -----------------------------------------------------------------------------
from configurator import configure, make_folder  # noqa: E402  (after the defaults)

# given: the keys a config file or --key=value set, e.g. block_size even when set to 1024
config, given = configure(globals(), return_given=True)

import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from model import GPT, GPTConfig, VARIANT_KEYS, set_fast_cpu  # noqa: E402
from smallgpt.checkpoint import gather_run_state, restore_run, run_checkpoint, save_checkpoint  # noqa: E402
from smallgpt.convert_attention import convert_resumed_model  # noqa: E402
from smallgpt.dataloader import Batches  # noqa: E402
from smallgpt.device import autocast_context, cached_peak_flops, note, peak_flops_cache, reuse_freed_memory  # noqa: E402
from smallgpt.errors import UserError, fail  # noqa: E402
from smallgpt.kvcache import XLMemory  # noqa: E402
from smallgpt.lock import acquire_run_lock, remove_stale_temp_files_under_lock  # noqa: E402
from smallgpt.metrics import line_accuracy  # noqa: E402
from smallgpt.runlog import RunLog  # noqa: E402
from smallgpt.runsetup import (check_model, check_settings, fit_block_size, gpt2_tokens_needed, load_resume_checkpoint, note_ignored_variants, open_dataset, resolve_auto_init, start_processes, warn_if_overwriting)  # noqa: E402
from smallgpt.runstate import (RandomStreams, StopSignal, any_rank, divergence_message, diverged, get_lr, resume_command)  # noqa: E402
from smallgpt.train_sample import TrainingSampler  # noqa: E402

REPO = os.path.dirname(os.path.abspath(__file__))

# ----------------------------------------------------------------------------- data, processes, device
try:
    check_settings(config)
    # the data is checked before any process group or device is set up: a mistake is one line, at once
    data = open_dataset(dataset, REPO, loss_on, answer_separator, eval_accuracy, data_order)
    run = start_processes(device, dtype, backend, parallel, compile, gradient_accumulation_steps,
                          dist_timeout_s)
    run_lock = None  # an out_dir belongs to one run at a time; an evaluate-only run writes nothing
    if run.master:
        make_folder(out_dir, 'out_dir')
        if not (eval_only or max_iters == 0):
            run_lock = acquire_run_lock(out_dir)
except UserError as e:
    fail(e)
meta, line_data = data.meta, data.lines
device, device_type, dtype = run.device, run.device_type, run.dtype  # 'auto' resolved
ddp, fsdp, ddp_rank, ddp_world_size, master_process = run.ddp, run.fsdp, run.rank, run.world_size, run.master
gradient_accumulation_steps //= ddp_world_size  # this rank's share of the global batch
if run_lock is not None:  # under the lock, every temporary save in out_dir is a dead run's
    for name in remove_stale_temp_files_under_lock(run_lock):
        note(f"removed {os.path.join(out_dir, name)}, left by a run killed while saving a checkpoint")
torch.manual_seed(seed + ddp_rank)  # dropout masks differ per rank; the batches are one stream
if device_type == 'cpu' and fast_cpu:
    reuse_freed_memory()  # glibc would hand freed activations back to the kernel every step
if device_type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: fast, accurate enough
    torch.backends.cudnn.allow_tf32 = True
ctx = autocast_context(device_type, dtype)

# ----------------------------------------------------------------------------- model
vocab_size = meta['vocab_size'] if meta else None
checkpoint = None  # init_from='resume': restore_run continues the run from it, below
init_from, resume_checkpoint_name = resolve_auto_init(init_from, out_dir, resume_checkpoint_name, ddp)
try:
    if init_from == 'scratch':
        if master_process and vocab_size is None:
            print("no meta.json in the dataset: assuming GPT-2's vocabulary (50304 = 50257 padded)")
        model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                              bias=bias, vocab_size=vocab_size or 50304, dropout=dropout,
                              **{key: config[key] for key in VARIANT_KEYS}))
    elif init_from == 'resume':
        # verified, with a training state and this dataset's vocabulary, on every rank
        checkpoint, ckpt_path = load_resume_checkpoint(out_dir, resume_checkpoint_name, device, meta,
                                                       dataset, ddp)
        model = GPT.from_checkpoint(checkpoint, dropout=dropout, path=ckpt_path)  # with its weights
    elif init_from.startswith('gpt2') or os.path.isdir(init_from) or '/' in init_from:
        gpt2_tokens = not meta or (meta.get('tokenizer'), meta.get('encoding')) == ('tiktoken', 'gpt2')
        if init_from.startswith('gpt2') and not gpt2_tokens:  # checked before the download
            raise UserError(gpt2_tokens_needed(dataset, meta, init_from))
        try:
            model = GPT.from_pretrained(init_from, dict(dropout=dropout))
        except (OSError, RuntimeError) as e:  # no such folder, no transformers, weights that don't fit
            raise UserError(e) from None
        if model.config.vocab_size in (50257, 50304) and not gpt2_tokens:  # a folder of GPT-2's vocabulary
            raise UserError(gpt2_tokens_needed(dataset, meta, init_from))
        if master_process:  # a Starcoder2 folder loads as a rotary model (smallgpt/hf/starcoder2.py)
            kind = 'Starcoder2' if model.config.pos_emb == 'rope' else 'GPT-2'
            print(f"initializing from {kind} weights: {init_from}")
    else:
        raise UserError(f"init_from={init_from!r}: use 'scratch', 'resume', gpt2/gpt2-medium/gpt2-large/"
                        f"gpt2-xl or the path of a local Hugging Face GPT-2 or Starcoder2 folder")
    if init_from != 'scratch':  # the architecture comes from the checkpoint or the weights
        asked = {key: config[key] for key in VARIANT_KEYS if key in given}
        # fewer K/V heads, a window or shared K/V: the weights converted (smallgpt/convert_attention.py)
        model, reshaped = convert_resumed_model(model, asked, kv_pool)
        if reshaped and checkpoint is not None:
            checkpoint['optimizer'] = None  # Adam's moments fit the old weights: start fresh
        shape = {key: config[key] for key in ('n_layer', 'n_head', 'n_embd', 'bias') if key in given}
        note_ignored_variants(model, {**shape, **asked}, init_from)
    check_model(model, vocab_size, xl_memory)
    block_size = fit_block_size(model, block_size, 'block_size' in given, seed)
    # TransformerXL: one memory per micro-batch of this rank (sequential rows: the same each step)
    xl_memories = [XLMemory(xl_memory) for _ in range(gradient_accumulation_steps)] if xl_memory else []
    batches = Batches(data, batch_size, block_size, device, data_order, gradient_accumulation_steps,
                      ddp_rank, ddp_world_size, seed, xl_memories)
    sampler = TrainingSampler(data, sample_start, sample_max_new_tokens, sample_temperature, seed,
                              device, ctx, sharded=fsdp) if sample_interval else None
except ValueError as e:  # a UserError (CheckpointError too), or GPTConfig's one-line ValueError
    fail(e)
tokens_per_iter = gradient_accumulation_steps * ddp_world_size * batch_size * block_size
if master_process:  # printed here, once block_size is final
    micro_batches = gradient_accumulation_steps * ddp_world_size
    print(f"tokens per iteration: {tokens_per_iter:,} ({micro_batches} micro-batch"
          f"{'es' if micro_batches > 1 else ''} of {batch_size} x {block_size} tokens)")
model_args = model.config.to_model_args()
# an earlier run's checkpoints, replaced at this run's first save (rank 0 writes, rank 0 looks)
earlier_run = warn_if_overwriting(out_dir, dataset, model_args) if master_process and init_from != 'resume' else []
model.to(device)
set_fast_cpu(model, fast_cpu)
if fsdp:  # before the optimizer: sharding turns the parameters into DTensors
    from smallgpt.distributed import shard_model
    shard_model(model)

# ----------------------------------------------------------------------------- optimizer
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type,
                                       fused=fast_cpu or device_type != 'cpu', compiled=compile)
raw_model = model
if compile:
    if master_process:
        print("compiling the model with torch.compile (takes a minute; --compile=False skips it)")
    model = torch.compile(model)
if ddp and not fsdp:
    model = DDP(model, device_ids=[run.local_rank] if device_type == 'cuda' else None)
if peak_flops <= 0 and master_process:
    peak_flops = cached_peak_flops(device, dtype, size=4096 if device_type == 'cuda' else 1024)
    # measured once and cached: a busy machine at that moment makes it low; say how to redo it
    print(f"{dtype} matmul peak: {peak_flops / 1e9:,.0f} GFLOP/s, measured once on this machine (MFU "
          f"is relative to it; --peak_flops=N sets it, deleting {peak_flops_cache()} measures again)")

# ----------------------------------------------------------------------------- resume, evaluation, saving
streams = RandomStreams(batches.generator, xl_memories, device)  # what an exact resume restores
iter_num, best_val_loss = 0, float('inf')
if checkpoint is not None:  # after the last random draw of the setup (the peak-FLOP/s matmul)
    iter_num, best_val_loss = restore_run(checkpoint, optimizer, scaler, streams, ddp_rank,
                                          ddp_world_size, seed, raw_model if fsdp else None)
    checkpoint = None  # free the memory
    if master_process:
        print(f"resuming from {ckpt_path} at iteration {iter_num} (best val loss {best_val_loss:.4f})")


@torch.no_grad()
def estimate_loss():
    """Mean loss per split over eval_iters batches (Batches.eval_plan: the same windows at every
    eval, spread over the whole split). Under torchrun each rank evaluates its share and the sums
    are added up, so the result is the same for any number of processes."""
    model.eval()
    sums = torch.zeros(4, device=device)  # train loss sum, train batches, val loss sum, val batches
    for s, split in enumerate(('train', 'val')):
        memory = XLMemory(xl_memory) if xl_memory else None  # from empty, carried as in training
        plan = batches.eval_plan(split, eval_iters, every_rank_alike=fsdp)
        if master_process and eval_iters >= 50:
            from tqdm import tqdm
            # shown only if slow, and only on a terminal (a log file would fill with \r lines)
            plan = tqdm(plan, desc=f"eval {split}", leave=False, delay=2.0, disable=None)
        for offsets, counted, wrapped in plan:
            if wrapped and memory is not None:
                memory.reset()
            X, Y = batches.get(split, offsets)
            with ctx:
                _, loss = model(X, Y, memory=memory) if memory is not None else model(X, Y)
            sums[2 * s] += loss.float() * counted
            sums[2 * s + 1] += counted
    if ddp:  # every rank evaluated different batches: add them up, and agree on the result
        dist.all_reduce(sums)
    model.train()
    return {'train': (sums[0] / sums[1]).item(), 'val': (sums[2] / sums[3]).item()}


accuracy_lines = line_data.lines('val', eval_accuracy) if eval_accuracy else []


def measure_accuracy():
    """Exact-match accuracy of the greedy answers to the first eval_accuracy val lines (greedy
    decoding draws no random numbers: the run's random streams are untouched)."""
    return line_accuracy(raw_model, line_data.tokenizer, accuracy_lines, line_data.separator,
                         meta['lines']['end_of_line'], ctx=ctx)['accuracy']


def save(names):
    """Write this iteration's checkpoints `names`: every rank hands in its state, rank 0 writes."""
    state = gather_run_state(raw_model, optimizer, streams, ddp_world_size, sharded=fsdp)
    for name in names if master_process else []:
        path = os.path.join(out_dir, name)
        try:
            save_checkpoint(run_checkpoint(state, scaler, model_args, iter_num, best_val_loss, config,
                                           meta), path)
        except UserError as e:  # a full disk, a folder gone read-only: the earlier file is kept
            fail(e)
        print(f"saved {path} (iteration {iter_num})")


stop_signal = StopSignal(torchrun=ddp)  # Ctrl+C or SIGTERM: finish the step, write last.pt, exit 130
if iter_num >= max_iters and not eval_only:
    eval_only = True  # e.g. --init_from=resume --max_iters=0: just report the losses
runlog = RunLog(out_dir, config, resume_iter=iter_num if init_from == 'resume' else None,
                evaluate_only=eval_only, tensorboard=tensorboard_log, wandb=wandb_log, wandb_project=wandb_project,
                wandb_run_name=wandb_run_name) if master_process else None

# ----------------------------------------------------------------------------- training loop
last_iter = max_iters
checkpoint_every = checkpoint_interval or eval_interval
start_iter = last_finite_iter = iter_num  # the last iteration whose loss (or eval) was finite
loss_sum = torch.zeros((), device=device)  # summed on the device; read only at log_interval
t0, iters_since_log, running_mfu = time.time(), 0, -1.0
params = list(raw_model.parameters())  # listed once: walking the modules each step costs ~0.1 ms
flops_per_iter = raw_model.flops_per_token() * block_size * batch_size * gradient_accumulation_steps
stop, bad, detail = False, False, ''  # a stop signal / a loss that is not finite, on any rank
while True:
    lr = get_lr(iter_num, learning_rate, warmup_iters, lr_decay_iters, min_lr) if decay_lr else learning_rate
    for group in optimizer.param_groups:
        group['lr'] = lr

    saves = []  # the checkpoints this iteration writes
    if not (stop or bad) and (iter_num % eval_interval == 0 or iter_num == last_iter or eval_only):
        losses = estimate_loss()
        if math.isfinite(losses['train']) and math.isfinite(losses['val']):
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
                saves.append('ckpt.pt')
        else:
            bad, detail = True, f" (evaluated train loss {losses['train']}, val loss {losses['val']})"
    if not eval_only and iter_num > start_iter and \
            (stop or iter_num % checkpoint_every == 0 or iter_num >= last_iter):
        saves.append('last.pt')
    # save or stop: the one place that writes checkpoints and ends the run. A checkpoint is
    # written only after checking that the loss and the weights are finite on every rank
    if bad or (saves and diverged(loss_sum, params, distributed=ddp, sharded=fsdp)):
        exit_code, message = 3, divergence_message(iter_num, last_finite_iter, out_dir, learning_rate, detail)
        break
    kept = bool(stop and saves and earlier_run)  # a Ctrl+C before this run's first checkpoint:
    if kept:  # the earlier run's files stay, as the warning said, and this run goes beside them
        saves = ['interrupted.pt']
    if saves:
        save(saves)
        if not kept:  # this run's first checkpoint replaces the earlier run's: no folder mixing two
            for name in [n for n in earlier_run if n not in saves]:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(out_dir, name))
                    print(f"removed the earlier run's {os.path.join(out_dir, name)} (this run replaces it)")
            earlier_run = []
    if stop or eval_only or iter_num >= last_iter:
        exit_code, message = (130 if stop else 0), None
        if stop and master_process and earlier_run:
            print(f"the earlier run's {' and '.join(earlier_run)} in {out_dir} are kept as they were")
        if stop and master_process and (saves or not earlier_run):
            resume = resume_command(sys.argv, ddp_world_size, ddp, checkpoint=(saves or ['last.pt'])[0])
            print(f"stopped at iteration {iter_num}. To resume:\n  {resume}")
        break

    # one optimizer step over gradient_accumulation_steps micro-batches
    micro_batches = batches.next_step(iter_num)
    X, Y = batches.get('train', micro_batches[0])
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
            X, Y = batches.get('train', micro_batches[micro_step + 1])  # during backward
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
    if sampler and master_process and iter_num % sample_interval == 0:
        sample_t0 = time.time()
        text = sampler.sample(raw_model, iter_num)
        print(f"sample at iteration {iter_num}: {text}")
        runlog.sample(iter_num, text)
        t0 += time.time() - sample_t0  # a sample's time is not the steps'
    # all ranks stop at the same step, or the others would wait forever in their next all_reduce
    stop, bad = any_rank([stop_signal.requested, nonfinite], device, distributed=ddp)

if runlog is not None:
    runlog.close()
if run_lock is not None:
    run_lock.release()  # after the last save (a process that dies releases it too)
if ddp:
    # wait for rank 0's last save: a rank that tears gloo down while rank 0 is still writing
    # can abort at exit ("terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()
if message:
    fail(message, exit_code)  # error: the loss is not finite ... (exit code 3)
sys.exit(exit_code)
