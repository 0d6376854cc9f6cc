"""
smallgpt/runstate.py's pieces of train.py's loop, called alone (train.py's end-to-end tests run
them inside a run): the divergence check, the random streams an exact resume restores, the resume
command line of a multi-node torchrun job.

    python -m pytest tests/test_runstate.py -q     # a second or two, CPU, offline
"""

import random

import numpy as np
import torch

from smallgpt.runstate import RandomStreams, diverged, divergence_message, resume_command  # noqa: E402


class Memory:
    """An XL memory stand-in: what RandomStreams saves and loads of one (model.py's XLMemory)."""

    def __init__(self, size, length=0):
        self.size, self.length = size, length

    def state_dict(self):
        return {'size': self.size, 'length': self.length, 'k': {}, 'v': {}}

    def load_state_dict(self, state, device):
        self.length = state['length']


def test_diverged_reads_only_its_inputs():
    params = [torch.ones(3, 2), torch.zeros(4)]
    assert not diverged(torch.tensor(1.5), params)
    assert diverged(torch.tensor(float('nan')), params)
    assert diverged(torch.tensor(1.5), [params[0], torch.tensor([0.0, float('inf')])])
    line = divergence_message(27, 20, 'out', 6e-4)
    assert "between iterations 21 and 27" in line and "learning_rate (now 0.0006)" in line
    assert "at iteration 21 (evaluated" in divergence_message(21, 20, 'out', 1.0, " (evaluated x)")


def draws(sampler):
    """One number from each stream a training step draws from."""
    return (random.random(), float(np.random.rand()), torch.rand(()).item(),
            torch.randint(1000, (1,), generator=sampler).item())


def test_random_streams_restore_every_stream_and_the_memories():
    sampler = torch.Generator().manual_seed(3)
    memories = [Memory(16, length=5), Memory(16, length=9)]
    streams = RandomStreams(sampler, memories)
    saved = streams.state()
    expected = [draws(sampler) for _ in range(3)]
    for memory in memories:
        memory.length = 0  # as a fresh run's memories are
    streams.continue_from([saved], rank=0, world_size=1, reseed=0)
    assert [draws(sampler) for _ in range(3)] == expected
    assert [m.length for m in memories] == [5, 9]

    # saved by 2 processes, resumed by 1: the global batch stream continues, dropout is reseeded
    streams.continue_from([saved, saved], rank=0, world_size=1, reseed=123)
    assert torch.randint(1000, (1,), generator=sampler).item() == expected[0][3]
    assert torch.rand(()).item() == torch.rand((), generator=torch.Generator().manual_seed(123)).item()


def test_resume_command_for_two_nodes_names_node_0s_launch():
    environ = {'LOCAL_WORLD_SIZE': '2', 'MASTER_ADDR': '10.0.0.1', 'MASTER_PORT': '29500',
               'TORCHELASTIC_MAX_RESTARTS': '3'}
    argv = ['train.py', 'config/train_gpt2.py', '--init_from=auto', "--out_dir=my runs",
            '--resume_checkpoint_name=ckpt.pt', '--max_iters=50']
    command = resume_command(argv, world_size=4, torchrun=True, environ=environ)
    assert command == ("torchrun --nnodes=2 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 "
                       "--nproc_per_node=2 --max-restarts=3 train.py config/train_gpt2.py "
                       "'--out_dir=my runs' --max_iters=50 --init_from=resume "
                       "--resume_checkpoint_name=last.pt\n"
                       "  (and on each other node the same with its --node_rank)")
    assert resume_command(argv[:2], environ={}) == \
        "python train.py config/train_gpt2.py --init_from=resume --resume_checkpoint_name=last.pt"
