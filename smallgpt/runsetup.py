"""
train.py's setup, one step per function: check the settings, open the dataset, start the
processes (torchrun) and pick the device, then fit the model to the run (vocabulary, block_size,
the variant settings a resumed or GPT-2 model can't take) and warn before a new run replaces an
old run's checkpoints. Each step raises UserError with one line that names the fix, so train.py
stops before any work with `error: ...` (smallgpt/errors.py).

The model is handed in (model.py's GPT): this package never imports model.py.
"""

import math
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from smallgpt.checkpoint import load_checkpoint, peek_checkpoint, resolve_name
from smallgpt.dataloader import PreparedDataset, count_tokens, load_meta
from smallgpt.tutorial import prepare_text_folder
from smallgpt.device import device_type_of, note, pick_device, pick_dtype
from smallgpt.errors import UserError, is_main_process
from smallgpt.lines import LineDataset, is_line_dataset
from smallgpt.runstate import resume_command
from smallgpt.tokenizer import vocabulary_difference


# the range of each number train.py takes: (lowest, highest, whether the ends are allowed).
# A value outside can only be a mistake (grad_clip=-1 trains uphill, beta2=1.5 grows the steps)
RANGES = {
    'learning_rate': (0.0, math.inf, '[0, inf), 0 = weights kept as they are'), 'min_lr': (0.0, math.inf, '[0, inf)'),
    'weight_decay': (0.0, math.inf, '[0, inf)'), 'grad_clip': (0.0, math.inf, '[0, inf), 0 = off'),
    'beta1': (0.0, 1.0, '[0, 1)'), 'beta2': (0.0, 1.0, '[0, 1)'), 'dropout': (0.0, 1.0, '[0, 1)'),
    'warmup_iters': (0, math.inf, '[0, inf)'), 'lr_decay_iters': (0, math.inf, '[0, inf)'),
    'peak_flops': (0.0, math.inf, '[0, inf), 0 = measure'),
    'dist_timeout_s': (0.0, math.inf, '(0, inf) seconds'),
}


def in_range(value, low, high, ends):
    """Whether `value` lies in the interval `ends` writes out: '[' or '(' then ')'."""
    return math.isfinite(value) and (value >= low if ends.startswith('[') else value > low) and \
        value < high


def check_settings(config):
    """The settings train.py can check on their own, before reading anything."""
    for name in ('eval_interval', 'log_interval', 'eval_iters', 'gradient_accumulation_steps',
                 'batch_size', 'block_size', 'n_layer', 'n_head', 'n_embd'):
        if config[name] < 1:
            raise UserError(f"{name}={config[name]} must be at least 1")
    for name, (low, high, ends) in RANGES.items():
        if not in_range(config[name], low, high, ends):
            raise UserError(f"{name}={config[name]} is out of range: it must be in {ends}")
    if config['n_embd'] % config['n_head']:
        raise UserError(f"n_embd={config['n_embd']} must be divisible by n_head={config['n_head']} "
                        f"(each head gets n_embd/n_head dimensions)")
    if config['eval_accuracy'] < 0:
        raise UserError(f"eval_accuracy={config['eval_accuracy']} can't be negative (0 = off)")
    if config['data_order'] not in ('random', 'sequential'):
        raise UserError(f"data_order={config['data_order']!r}: use 'random' or 'sequential'")
    xl_memory = config['xl_memory']
    if xl_memory < 0 or (xl_memory and config['data_order'] != 'sequential'):
        raise UserError(f"xl_memory={xl_memory} carries keys/values from one step to the next, so "
                        f"it needs --data_order=sequential (and xl_memory >= 0)")
    if config['checkpoint_interval'] < 0 or config['max_iters'] < 0:
        raise UserError(f"checkpoint_interval={config['checkpoint_interval']} and max_iters="
                        f"{config['max_iters']} can't be negative")
    if config['parallel'] not in ('ddp', 'fsdp'):
        raise UserError(f"parallel={config['parallel']!r}: use 'ddp' or 'fsdp'")
    out_dir = config['out_dir']
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out_dir={out_dir} is a file, not a folder; pass another --out_dir")


def open_dataset(dataset, repo, loss_on='all', answer_separator='', eval_accuracy=0,
                 data_order='random'):
    """The prepared dataset `dataset` names: a folder under repo/data/ (nanoGPT's way), else a
    folder path. Checked before any process group or device is set up: a mistake is one line,
    at once, naming the prepare command when the dataset ships one."""
    data_dir = os.path.join(repo, 'data', dataset)
    if not os.path.isdir(data_dir) and os.path.isdir(dataset):
        data_dir = dataset
    prepare = os.path.join('data', dataset, 'prepare.py')
    has_prepare = os.path.isfile(os.path.join(repo, prepare))
    if os.path.isfile(dataset):
        raise UserError(f"--dataset={dataset} is a file; --dataset takes a prepared folder (train.bin, "
                        f"val.bin) or a name under data/. For a text file: python "
                        f"data/don_char/prepare.py --input={dataset}, then --dataset=don_char")
    try:
        prepare_text_folder(data_dir)  # the transformer tutorial's train.txt / val.txt: once
    except ValueError as e:
        raise UserError(str(e)) from None
    for split in ('train', 'val'):
        if not os.path.isfile(os.path.join(data_dir, f'{split}.bin')):
            raise UserError(f"dataset {dataset!r} has no {split}.bin in {data_dir}; " +
                            (f"run: python {prepare}" if has_prepare else
                             "prepare it first (ls data/ lists the datasets that ship a prepare.py)"))
    meta = load_meta(data_dir)
    token_dtype = np.dtype(meta['dtype'] if meta else 'uint16')
    try:
        split_tokens = {split: count_tokens(os.path.join(data_dir, f'{split}.bin'), token_dtype)
                        for split in ('train', 'val')}
    except UserError as e:
        raise UserError(f"{e}" + (f": python {prepare}" if has_prepare else
                                  " with the script that made it")) from None
    line_data = None
    if is_line_dataset(meta):
        try:
            line_data = LineDataset(data_dir, meta, splits=('train', 'val'))
            line_data.set_targets(loss_on, answer_separator)
        except ValueError as e:
            raise UserError(str(e)) from None
        if eval_accuracy and not line_data.separator:
            raise UserError(f"eval_accuracy needs an answer separator and {dataset!r} has none: "
                            f"pass --answer_separator (e.g. '=')")
        if data_order == 'sequential':
            raise UserError(f"data_order='sequential' reads running text, and {dataset!r} is a line "
                            f"dataset (one sample per line, no text runs on); use data_order='random'")
    elif loss_on != 'all' or answer_separator or eval_accuracy:
        raise UserError(f"loss_on, answer_separator and eval_accuracy work on line datasets, and "
                        f"{dataset!r} is plain text; make one with: python data/charline/prepare.py "
                        f"--input=lines.txt")
    return PreparedDataset(dataset, data_dir, meta, token_dtype, split_tokens, line_data)


@dataclass
class Processes:
    """This process's place in the run, and where it computes."""
    ddp: bool  # started by torchrun (whichever `parallel`)
    fsdp: bool  # ... and sharding the model (parallel='fsdp')
    rank: int
    local_rank: int
    world_size: int
    device: str  # under torchrun on GPUs: this rank's cuda:LOCAL_RANK
    device_type: str
    dtype: str

    @property
    def master(self):
        return self.rank == 0  # prints, logs and writes the checkpoints


def start_processes(device='auto', dtype='auto', backend='nccl', parallel='ddp', compile=True,
                    gradient_accumulation_steps=1, timeout_s=600):
    """Under torchrun (RANK set), join the process group: one process per GPU (nccl), or per
    CPU socket (gloo, whatever `backend` says), its collectives waiting at most `timeout_s`
    seconds for the other ranks. Pick the device and the dtype."""
    ddp = int(os.environ.get('RANK', -1)) != -1
    fsdp = ddp and parallel == 'fsdp'
    if parallel == 'fsdp' and not ddp:
        note("parallel='fsdp' without torchrun: one process holds everything, trained as usual")
    if fsdp and compile:
        raise UserError("parallel='fsdp' with compile=True is not supported here yet; pass --compile=False")
    if fsdp and dtype == 'float16':
        raise UserError("parallel='fsdp' with dtype='float16' (a GradScaler) is not supported; pass "
                        "--dtype=bfloat16 or --dtype=float32")
    device = pick_device(device)
    device_type = device_type_of(device)
    rank, local_rank, world_size = 0, 0, 1
    if ddp:
        rank, local_rank = int(os.environ['RANK']), int(os.environ['LOCAL_RANK'])
        world_size = int(os.environ['WORLD_SIZE'])
        if device_type == 'cuda':
            device = f'cuda:{local_rank}'
            torch.cuda.set_device(device)
        elif backend == 'nccl':
            backend = 'gloo'  # nccl is GPU-only
        from smallgpt.distributed import init_process_group  # FSDP's imports take a second: torchrun only
        init_process_group(backend, timeout_s)
        if gradient_accumulation_steps % world_size != 0:
            raise UserError(f"gradient_accumulation_steps={gradient_accumulation_steps} is not "
                            f"divisible by the {world_size} processes; use a multiple of {world_size}")
    dtype = pick_dtype(dtype, device_type, quiet=rank != 0)
    if rank == 0:
        print(f"device {device}, dtype {dtype}, {world_size} process(es)")
    return Processes(ddp, fsdp, rank, local_rank, world_size, device, device_type, dtype)


def resolve_auto_init(init_from, out_dir, resume_checkpoint_name, distributed=False):
    """init_from='auto', for restarts (torchrun --max-restarts, a preempted job run again): the
    same command line starts a run the first time and continues it from its last.pt after.
    Returns (init_from, resume_checkpoint_name), unchanged for any other init_from. Under
    torchrun rank 0 looks at its disk and every rank follows it (`distributed`): on nodes
    without shared storage each would decide alone, one resuming, the other starting afresh."""
    if init_from != 'auto':
        return init_from, resume_checkpoint_name
    found = os.path.isfile(os.path.join(out_dir, 'last.pt')) if is_main_process() else None
    if distributed:
        from smallgpt.distributed import rank0_decides
        found = rank0_decides(found)
    if found:
        init_from, resume_checkpoint_name = 'resume', 'last.pt'
    else:
        init_from = 'scratch'
    if is_main_process():
        print("init_from='auto': " + ("resuming from last.pt" if init_from == 'resume'
                                      else "no last.pt yet, starting from scratch"))
    return init_from, resume_checkpoint_name


def load_resume_checkpoint(out_dir, name, device, data_meta, dataset, distributed=False):
    """init_from='resume': (checkpoint, path) of out_dir/name, once it is known to be a run to
    continue on this dataset: verified (checkpoint.py), holding a training state, with the
    vocabulary of `data_meta`. A resume from ckpt.pt that would replace a newer last.pt says so.
    Under torchrun every rank reads its own copy, and a rank that can't stops them all with its
    line (printed by rank 0), instead of leaving the others waiting in their first collective."""
    path = os.path.join(out_dir, resolve_name(name))
    checkpoint, error = None, None
    try:
        checkpoint = load_checkpoint(path, device)
        check_resume_identity(checkpoint, path, data_meta, dataset)
    except UserError as e:
        error = str(e)
    if distributed:
        from smallgpt.distributed import first_failure
        failure = first_failure(error)
        if failure is not None and failure[0] != 0:  # rank 0 read its file: this node's differs
            error = (f"rank {failure[0]}: {failure[1]} (rank 0 resumes from its {path}: every "
                     f"node needs the same out_dir, on shared storage or copied)")
        elif failure is not None:
            error = failure[1]
    if error:
        raise UserError(error)
    if is_main_process():
        warn_if_newer_last(path, checkpoint['iter_num'], distributed)
    return checkpoint, path


def check_resume_identity(checkpoint, path, data_meta, dataset):
    """A checkpoint a run can continue on `dataset`: it holds a training state, and its
    vocabulary is the dataset's (resuming on a re-prepared dataset trained on the wrong ids)."""
    missing = [key for key in ('iter_num', 'optimizer') if key not in checkpoint]
    if missing:
        raise UserError(f"{path} holds a model's weights but no training state (no "
                        f"{' or '.join(map(repr, missing))}), so no run can continue from it; "
                        f"sample.py and eval.py read it as it is (--checkpoint_name=...)")
    if 'meta' not in checkpoint:
        return  # a nanoGPT checkpoint: its vocabulary is its dataset's (check_model compares sizes)
    difference = vocabulary_difference(checkpoint['meta'], data_meta, ('the checkpoint', 'the dataset'))
    if difference:
        trained_on = (checkpoint.get('config') or {}).get('dataset')
        raise UserError(f"dataset {dataset!r} is tokenized differently from {path} (checkpoint vs "
                        f"dataset: {difference}); resuming would train on ids that mean other "
                        f"tokens. Continue the run on its own data (--dataset={trained_on}), or "
                        f"start a new run on this data with another --out_dir")


def warn_if_newer_last(path, iter_num, distributed=False):
    """Resuming from ckpt.pt (the best val loss) while last.pt holds a later iteration is a
    choice (going back to the best point), not refused; but the run's first save of last.pt
    replaces the later one, so say it once with the command that continues from it instead."""
    folder, name = os.path.split(path)
    last = peek_checkpoint(os.path.join(folder, 'last.pt')) if name == 'ckpt.pt' else None
    if last is not None and isinstance(last['iter_num'], int) and last['iter_num'] > iter_num:
        print(f"warning: resuming from {path} at iteration {iter_num}, while last.pt holds "
              f"iteration {last['iter_num']}; this run's first save of last.pt replaces it. To "
              f"continue from iteration {last['iter_num']} instead: "
              f"{resume_command(sys.argv, int(os.environ.get('WORLD_SIZE', 1)), distributed)}", file=sys.stderr)


def note_ignored_variants(model, asked, init_from):
    """A resumed or GPT-2 model keeps its own architecture. `asked`: the shape and variant
    settings the user gave ({key: value}); name those the model doesn't have, rather than train
    a model the user did not ask for in silence."""
    ignored = [k for k, v in asked.items() if v != getattr(model.config, k)]
    if ignored:
        wanted = ', '.join(f"{k}={asked[k]!r}" for k in ignored)
        kept = ', '.join(f"{k}={getattr(model.config, k)!r}" for k in ignored)
        note(f"{wanted} ignored: the model from {init_from} keeps its own {kept} (these "
             f"settings shape a model trained from scratch)")


def gpt2_tokens_needed(dataset, meta, init_from):
    """The one line for GPT-2 weights asked to train on another tokenizer's ids."""
    kind = meta.get('encoding') if meta.get('tokenizer') == 'tiktoken' else meta.get('tokenizer')
    return (f"dataset {dataset!r} is tokenized with {kind!r}, but {init_from} expects GPT-2 BPE "
            f"tokens; use a GPT-2 dataset such as data/don (python data/don/prepare.py)")


def check_model(model, vocab_size, xl_memory):
    """What the data and the settings need of a model that came from a checkpoint or GPT-2."""
    if vocab_size is not None and vocab_size > model.config.vocab_size:
        raise UserError(f"dataset vocabulary ({vocab_size}) is larger than the model's "
                        f"({model.config.vocab_size})")
    if xl_memory and (model.config.pos_emb == 'learned' or model.config.attention == 'linear'):
        raise UserError(f"xl_memory needs relative positions and softmax attention, and this model "
                        f"has pos_emb={model.config.pos_emb!r}, attention={model.config.attention!r}; "
                        f"train with --pos_emb=rope (or none) and --attention=softmax")


def fit_block_size(model, block_size, given, seed):
    """The context length the run trains at, with `model` cropped or grown to it. A shorter
    block_size crops the model's positions; a longer one grows them only when the user gave it
    (`given`: a config file or --block_size set it, even to 1024): left at its default, a resumed
    or GPT-2 model keeps its own context length."""
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)  # e.g. GPT-2's 1024 positions cut down to 256
    elif block_size > model.config.block_size and not given:
        note(f"block_size={block_size} (the default) is more than the model's "
             f"{model.config.block_size} positions: training with block_size="
             f"{model.config.block_size}; pass --block_size to train at a longer context")
        block_size = model.config.block_size
    elif block_size > model.config.block_size:
        if model.config.pos_emb == 'learned':
            note(f"block_size={block_size} is more than the model's {model.config.block_size} "
                 f"learned positions: {block_size - model.config.block_size} new rows of wpe start "
                 f"as the mean learned row plus noise, and train from there")
        # the same new rows on every DDP rank (the seed, not seed + rank)
        model.extend_block_size(block_size, torch.Generator().manual_seed(seed))
    return block_size


def warn_if_overwriting(out_dir, dataset, model_args):
    """nanoGPT overwrites an out_dir's checkpoints without a word; keep the overwrite, say it
    first: what the earlier run was and what changed. Returns the earlier run's checkpoint
    names found (train.py keeps them on a Ctrl+C before its first checkpoint)."""
    found = [n for n in ('ckpt.pt', 'last.pt') if os.path.isfile(os.path.join(out_dir, n))]
    if not found:
        return []
    old = peek_checkpoint(os.path.join(out_dir, found[0]))
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
          f"run replaces them at its first checkpoint (a Ctrl+C before then keeps them). Use another "
          f"--out_dir to keep them, or --init_from=resume to continue that run", file=sys.stderr)
    return found
