"""
What a training run carries from one step to the next besides its weights and AdamW state, and
how it stops: the learning-rate schedule, the random streams an exact resume restores, the stop
signal (Ctrl+C, a scheduler's SIGTERM), the divergence check and the command line that resumes.

train.py's loop uses these; every function takes what it reads as arguments (no globals), so a
test can call it alone. What this is not: a trainer class, or a loop of its own.
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
import torch.distributed as dist

from smallgpt.device import note
from smallgpt.errors import is_main_process


def get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, then min_lr.
    A warmup that reaches lr_decay_iters leaves no room for the cosine: min_lr after the warmup
    (e.g. --max_iters=2000 --lr_decay_iters=2000 with warmup_iters=2000 used to divide by zero)."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:  # at lr_decay_iters the cosine is min_lr too: the same value
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return min_lr + coeff * (learning_rate - min_lr)


# ----------------------------------------------------------------------------- random streams

class RandomStreams:
    """Every random number a training step draws, per process: Python's, numpy's, torch's (dropout)
    and CUDA's global generators and the batch sampler's own generator (`sampler`). Saved with them,
    though not random: this rank's TransformerXL memories (`memories`, one per micro-batch), which
    an exact resume needs just as much."""

    def __init__(self, sampler, memories=(), device='cpu'):
        self.sampler, self.memories, self.device = sampler, list(memories), device
        self.cuda = device.startswith('cuda')

    def state(self):
        np_state = np.random.get_state()
        return {
            'python': random.getstate(),
            'numpy': (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if self.cuda else [],
            'sampler': self.sampler.get_state(),
            'xl_memory': [memory.state_dict() for memory in self.memories],  # this rank's, for exact resume
        }

    def load(self, state):
        random.setstate(state['python'])
        kind, keys, *rest = state['numpy']
        np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
        torch.set_rng_state(state['torch'])
        if self.cuda and state['cuda']:
            torch.cuda.set_rng_state_all(state['cuda'])
        self.sampler.set_state(state['sampler'])
        saved_memory = state.get('xl_memory') or []
        if self.memories and len(saved_memory) == len(self.memories) \
                and all(m['size'] == memory.size for m, memory in zip(saved_memory, self.memories)):
            for memory, saved in zip(self.memories, saved_memory):
                memory.load_state_dict(saved, self.device)
        elif self.memories:
            note(f"the checkpoint holds no XL memory of {self.memories[0].size} tokens for these "
                 f"micro-batches: training continues from an empty memory")

    def continue_from(self, saved, rank, world_size, reseed):
        """Restore this rank's streams from a checkpoint's `saved` (one entry per rank that
        saved it). Saved by another number of processes: the batch stream, which is global,
        continues exactly; dropout draws are per process, so they start from `reseed`."""
        if saved and len(saved) == world_size:
            self.load(saved[rank])
        elif saved:
            self.sampler.set_state(saved[0]['sampler'])
            torch.manual_seed(reseed)
            note(f"the checkpoint was saved by {len(saved)} process(es), this run has "
                 f"{world_size}: batches continue exactly, dropout masks from a new seed" +
                 (", the XL memory from empty (each rank now holds other rows)" if self.memories else ""))
        else:
            note("the checkpoint has no random state (a nanoGPT checkpoint): batches and dropout "
                 "continue from a fresh seed")


# ----------------------------------------------------------------------------- stopping

class StopSignal:
    """Ctrl+C (SIGINT) or a scheduler's SIGTERM: `requested` turns True, and the loop finishes
    its step, writes last.pt and exits 130. A second signal exits at once, without saving."""

    def __init__(self, torchrun=False):
        self.torchrun = torchrun
        self.requested = False
        self.first_time = 0.0
        signal.signal(signal.SIGINT, self.request)
        signal.signal(signal.SIGTERM, self.request)

    def request(self, signum, frame):
        if self.requested:
            # Ctrl+C reaches torchrun's workers twice: from the terminal, and forwarded by torchrun
            # a moment later. Only a second press (or signal) counts
            if self.torchrun and time.monotonic() - self.first_time < 1.0:
                return
            print("\nsecond interrupt: exiting now without saving", file=sys.stderr)
            os._exit(130)
        self.requested, self.first_time = True, time.monotonic()
        if is_main_process():
            print("\ninterrupt: finishing this step, then writing last.pt "
                  "(press Ctrl+C again to quit at once)", file=sys.stderr)


def any_rank(flags, device, distributed=False):
    """`flags` (a list of bools) or-ed over all ranks: under torchrun all ranks must stop at the
    same step, or the others wait forever in their next all_reduce."""
    if not distributed:
        return flags
    agreed = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return [v > 0 for v in agreed.tolist()]


def diverged(loss_sum, params, distributed=False, sharded=False):
    """True when `loss_sum` (the losses summed since the last printed one) or any of `params`
    is NaN/inf, on any rank. Checked before every checkpoint write (one pass over the weights,
    only then), so a diverged run never replaces a good checkpoint, even when log_interval hides
    the bad loss for a while. Under torchrun every rank must call it."""
    bad = not bool(torch.isfinite(loss_sum)) or \
        not all(bool(torch.isfinite(p.to_local() if sharded else p).all()) for p in params)
    return any_rank([bad], loss_sum.device, distributed)[0]


def divergence_message(iter_num, last_finite_iter, out_dir, learning_rate, detail=''):
    """The one line a diverged run ends with: where the loss stopped being finite, what was kept
    and what to try."""
    where = f"at iteration {iter_num}" if iter_num - last_finite_iter <= 1 else \
        f"between iterations {last_finite_iter + 1} and {iter_num}"
    return (f"the loss is not finite {where}{detail}; training stopped and no checkpoint was "
            f"written over the last good ones in {out_dir}. Try a lower learning_rate (now "
            f"{learning_rate}), grad_clip=1.0, or dtype=bfloat16/float32 instead of float16")


def resume_command(argv, world_size=1, torchrun=False, environ=os.environ, checkpoint='last.pt'):
    """This run's command line (`argv`: sys.argv), quoted for a shell, with init_from=resume from
    `checkpoint`; under torchrun the torchrun line for as many nodes and processes (node 0's,
    where rank 0 runs)."""
    args = [a for a in argv[1:] if not a.startswith(('--init_from=', '--resume_checkpoint_name='))]
    launcher = ['python']
    nodes = 1
    if torchrun:
        per_node = int(environ.get('LOCAL_WORLD_SIZE', world_size))
        nodes = world_size // per_node
        launcher = ['torchrun', '--standalone'] if nodes == 1 else \
            ['torchrun', f'--nnodes={nodes}', '--node_rank=0',
             f"--master_addr={environ['MASTER_ADDR']}", f"--master_port={environ['MASTER_PORT']}"]
        launcher.append(f'--nproc_per_node={per_node}')
        restarts = int(environ.get('TORCHELASTIC_MAX_RESTARTS', 0))
        if restarts:
            launcher.append(f'--max-restarts={restarts}')
    command = shlex.join([*launcher, argv[0], *args, '--init_from=resume',
                          f'--resume_checkpoint_name={checkpoint}'])
    if nodes > 1:
        command += "\n  (and on each other node the same with its --node_rank)"
    return command
