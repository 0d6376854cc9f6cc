"""
Reading a prepared dataset: meta.json (checked; with its tokenizer.json for a BPE of its own), token counts, and the windows a batch is cut
from (random, sequential, or evenly spread for evaluation), read from the memory-mapped
train.bin / val.bin; and Batches, the batch source of a training run (this rank's micro-batches,
the evaluation's batches). A nanoGPT folder with a meta.pkl still loads, through a pickle reader
that refuses to import anything, so a meta.pkl from the internet cannot run code on your machine.

torch is imported only where a tensor is made: the prepare scripts read this module too.
"""

import json
import os
import pickle
from dataclasses import dataclass

import numpy as np

from smallgpt.errors import UserError
from smallgpt.tokenizer import KINDS, Tokenizer, json_sha256

META_VERSION = 1  # bump when meta.json changes meaning; load_meta refuses other versions


def _check_meta(meta, path):
    """One-line UserError naming the file when meta.json is not what write_meta writes."""
    fix = "re-create it with the dataset's prepare.py"
    if not isinstance(meta, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(meta).__name__}; {fix}")
    if meta.get("version") != META_VERSION:
        raise UserError(f"{path}: meta version {meta.get('version')!r}, this code reads version {META_VERSION}; {fix}")
    if meta.get("tokenizer") not in KINDS:
        raise UserError(f"{path}: tokenizer must be one of {', '.join(KINDS)}, got {meta.get('tokenizer')!r}; {fix}")
    if not isinstance(meta.get("vocab_size"), int) or meta["vocab_size"] <= 0:
        raise UserError(f"{path}: vocab_size must be a positive integer, got {meta.get('vocab_size')!r}; {fix}")
    if meta.get("dtype") not in ("uint16", "uint32"):
        raise UserError(f"{path}: dtype must be 'uint16' or 'uint32', got {meta.get('dtype')!r}; {fix}")
    if meta["tokenizer"] == "char":
        chars = meta.get("chars")
        if not isinstance(chars, list) or len(chars) != meta["vocab_size"] \
                or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise UserError(f"{path}: 'chars' must list vocab_size={meta['vocab_size']} single characters; {fix}")
    elif meta["tokenizer"] == "bytes" and meta["vocab_size"] != 256:
        raise UserError(f"{path}: a bytes tokenizer has vocab_size 256, not {meta['vocab_size']}; {fix}")
    elif meta["tokenizer"] == "bpe" and not (isinstance(meta.get("tokenizer_file"), str)
                                             and isinstance(meta.get("tokenizer_sha256"), str)):
        raise UserError(f"{path}: a bpe meta names its 'tokenizer_file' and 'tokenizer_sha256'; {fix}")
    elif meta["tokenizer"] == "tiktoken" and not isinstance(meta.get("encoding"), str):
        raise UserError(f"{path}: a tiktoken meta needs an 'encoding' name such as 'gpt2'; {fix}")


def _attach_tokenizer_json(meta, dataset_dir):
    """A bpe dataset's tokenizer.json, read into meta["tokenizer_json"] once checked against
    meta.json: the .bin files mean nothing with another tokenizer. Keeping the text in the dict
    puts it in every checkpoint train.py saves (it stores meta), so sampling, evaluation and
    export never need the data folder (a str: weights_only=True still loads the checkpoint)."""
    path = os.path.join(dataset_dir, meta["tokenizer_file"])
    fix = "re-run the dataset's prepare.py with --tokenizer=bpe --vocab_size=N"
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing, and {os.path.join(dataset_dir, 'meta.json')} says "
                         f"the dataset was tokenized with it; {fix}")
    with open(path, "rb") as f:  # bytes: the sha256 is of the file exactly as written
        meta["tokenizer_json"] = f.read().decode("utf-8", errors="replace")
    if json_sha256(meta["tokenizer_json"]) != meta["tokenizer_sha256"]:
        raise UserError(f"{path} does not match meta.json (another sha256): it is not the "
                         f"tokenizer train.bin and val.bin were written with; {fix}")
    try:
        Tokenizer.from_meta(meta)  # parses, and checks vocab_size against meta.json's
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def load_meta(dataset_dir) -> dict | None:
    """meta.json of a dataset folder (for a bpe dataset with its tokenizer.json's text in
    "tokenizer_json"), else its nanoGPT meta.pkl in the same form, else None (GPT-2 BPE)."""
    json_path = os.path.join(dataset_dir, "meta.json")
    pkl_path = os.path.join(dataset_dir, "meta.pkl")
    if os.path.exists(json_path):
        try:
            with open(json_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{json_path}: not valid JSON ({e}); re-create it with the dataset's prepare.py")
        _check_meta(meta, json_path)
        if meta["tokenizer"] == "bpe":
            _attach_tokenizer_json(meta, dataset_dir)
        return meta
    if os.path.exists(pkl_path):
        old = safe_unpickle(pkl_path)
        fix = "re-create it with the dataset's prepare.py"
        if not isinstance(old, dict) or not isinstance(old.get("vocab_size"), int) \
                or not isinstance(old.get("itos"), dict):
            raise UserError(f"{pkl_path}: expected a dict with 'vocab_size' and 'itos' (nanoGPT char meta); {fix}")
        try:
            chars = [old["itos"][i] for i in range(old["vocab_size"])]
        except KeyError as e:
            raise UserError(f"{pkl_path}: itos has no entry for token id {e}; {fix}")
        meta = {"version": META_VERSION, "tokenizer": "char", "vocab_size": old["vocab_size"],
                "dtype": "uint16",  # nanoGPT always wrote uint16
                "chars": chars,
                "train_tokens": _count_tokens(dataset_dir, "train.bin", "uint16"),
                "val_tokens": _count_tokens(dataset_dir, "val.bin", "uint16"),
                "source": pkl_path}
        _check_meta(meta, pkl_path)
        return meta
    return None


def _count_tokens(dataset_dir, name, dtype):
    path = os.path.join(dataset_dir, name)
    return os.path.getsize(path) // np.dtype(dtype).itemsize if os.path.exists(path) else None


def count_tokens(bin_path, dtype):
    """The number of tokens in a .bin file. UserError, naming the file, when its size is not a
    whole number of tokens: numpy would refuse to map it with a traceback."""
    size, itemsize = os.path.getsize(bin_path), np.dtype(dtype).itemsize
    if size % itemsize:
        raise UserError(f"{bin_path} is {size:,} bytes, not a whole number of {np.dtype(dtype).name} "
                         f"tokens ({itemsize} bytes each): the file was cut short (a full disk, an "
                         f"interrupted copy?) or meta.json names the wrong dtype; re-create it")
    return size // itemsize


def eval_offsets(bin_path, dtype, n_windows, block_size):
    """n_windows window starts spread evenly over a .bin file: an evaluation that covers the
    whole split, the same every time, with less variance than as many random windows."""
    n_tokens = os.path.getsize(bin_path) // np.dtype(dtype).itemsize
    return np.linspace(0, n_tokens - block_size - 1, n_windows).astype(np.int64).tolist()


def sequential_starts(n_tokens, n_rows, block_size, step):
    """Window starts of `n_rows` rows at training step `step` for data_order='sequential', and
    whether this step starts the rows over. The split is cut into n_rows equal stretches; row g
    reads its stretch block_size tokens at a time, so row g of step t+1 starts where row g of
    step t ended, and after the last whole window of its stretch it wraps to the stretch's start.
    A function of the step alone (no state): exact resume and any DDP world size come free.
    All stretches hold as many windows, so every row wraps at the same step."""
    stretch = n_tokens // n_rows
    windows = (stretch - 1) // block_size  # whole windows of block_size + 1 tokens per stretch
    if windows < 1:
        raise UserError(f"data_order='sequential' cuts {n_tokens:,} tokens into {n_rows} rows of "
                         f"{stretch:,}, shorter than block_size + 1 = {block_size + 1}; use a "
                         f"smaller batch_size, gradient_accumulation_steps or block_size")
    k = step % windows
    return [g * stretch + k * block_size for g in range(n_rows)], k == 0


def sample_batch(bin_path, dtype, batch_size, block_size, generator=None, offsets=None):
    """batch_size random windows of a .bin file (or the windows starting at `offsets`):
    inputs x and next-token targets y, (B, T) int64.

    The memmap is opened per batch on purpose: closing it releases the pages it touched, so
    resident memory stays flat even when train.bin is far larger than RAM.
    """
    import torch  # only the training side needs torch; prepare scripts don't

    data = np.memmap(bin_path, dtype=np.dtype(dtype), mode="r")
    ix = offsets if offsets is not None else \
        torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
    rows = torch.from_numpy(np.stack([data[i:i + block_size + 1] for i in ix]).astype(np.int64))
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()  # (B, T) each


class _PlainDataUnpickler(pickle.Unpickler):
    """Loads only what a pickle builds without importing: dict, list, tuple, set, str, bytes, numbers,
    bool, None. Every class or function reference (the way a pickle runs code) goes through
    find_class, and find_class refuses them all."""

    def __init__(self, file, path):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        raise _RefusedGlobal(f"{self.path}: refusing to unpickle '{module}.{name}': meta.pkl may only hold "
                             f"plain dicts, lists, strings and numbers. Re-create it with the dataset's prepare.py")


class _RefusedGlobal(UserError):
    pass


def safe_unpickle(path):
    """pickle.load that cannot run code: plain data only, UserError for anything else."""
    with open(path, "rb") as f:
        try:
            return _PlainDataUnpickler(f, path).load()
        except _RefusedGlobal:
            raise
        except Exception as e:  # truncated or corrupt: EOFError, UnpicklingError, ValueError, ...
            raise UserError(f"{path}: not a readable pickle ({type(e).__name__}: {e}); "
                             f"re-create it with the dataset's prepare.py")


# ----------------------------------------------------------------------------- a training run's batches

@dataclass
class PreparedDataset:
    """A prepared dataset folder as a training run reads it (runsetup.open_dataset checks and
    opens one)."""
    name: str  # the dataset setting: a folder under data/, or a path
    folder: str
    meta: dict | None  # None: GPT-2 token ids without a meta.json (nanoGPT's openwebtext)
    token_dtype: np.dtype
    split_tokens: dict  # split -> tokens in its .bin
    lines: object = None  # a LineDataset (smallgpt/lines.py): one line per window; None = running text

    def path(self, split):
        return os.path.join(self.folder, f"{split}.bin")


class Batches:
    """The batches of one training run on this process: windows of block_size + 1 tokens cut from
    train.bin / val.bin (a line dataset: one line per window, padded), as inputs and next-token
    targets on `device`.

    Training batches come from one global stream: the sampler has its own generator (so its
    position is saved and resumed exactly), seeded alike on every rank; each optimizer step draws
    all micro_steps x world_size micro-batches of the step and each rank keeps every
    world_size-th, from its rank, so 1 process x 4 micro-batches, 2 x 2 and 4 x 1 train on the
    same windows (README: Distributed training). data_order='sequential': row g of the global
    batch continues its own stretch of text (sequential_starts), and where the rows start over
    `memories` (TransformerXL's, one per micro-batch of this rank, handed in) are emptied.
    UserError at once when the data can't give windows of block_size."""

    def __init__(self, data, batch_size, block_size, device, data_order="random", micro_steps=1,
                 rank=0, world_size=1, seed=1337, memories=()):
        import torch

        self.data, self.batch_size, self.block_size, self.device = data, batch_size, block_size, device
        self.data_order, self.micro_steps, self.rank, self.world_size = data_order, micro_steps, rank, world_size
        self.memories = memories
        self.pin_memory = torch.device(device).type == "cuda"  # the copy then overlaps with compute
        self.generator = torch.Generator().manual_seed(seed)
        if data.lines is not None:
            try:
                data.lines.check_block_size(block_size)
            except ValueError as e:
                raise UserError(str(e)) from None
        for split, n_tokens in data.split_tokens.items():
            if n_tokens <= block_size and data.lines is None:  # a window of a line dataset is one line
                raise UserError(f"{split}.bin of {data.name!r} has {n_tokens} tokens, not more than "
                                f"block_size={block_size}; use a smaller --block_size or more text")
            if data_order == "sequential":
                rows = batch_size * (micro_steps * world_size if split == "train" else 1)
                try:
                    sequential_starts(n_tokens, rows, block_size, 0)
                except UserError as e:
                    raise UserError(f"{split}.bin: {e}") from None

    def get(self, split, offsets):
        """The windows starting at `offsets` (line numbers for a line dataset): x, y (B, T)."""
        if self.data.lines is not None:  # one line per window
            x, y = self.data.lines.batch(split, len(offsets), self.block_size, line_indices=offsets)
        else:
            x, y = sample_batch(self.data.path(split), self.data.token_dtype, len(offsets),
                                self.block_size, offsets=offsets)  # (B, T) each
        if self.pin_memory:
            return x.pin_memory().to(self.device, non_blocking=True), \
                y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def next_step(self, iter_num):
        """Where this rank's micro-batches of optimizer step `iter_num` start: a list of
        micro_steps lists of batch_size window starts (line numbers for a line dataset)."""
        import torch

        n_micro = self.micro_steps * self.world_size
        if self.data_order == "sequential":  # row g of the global batch continues its own stretch
            starts, wrapped = sequential_starts(self.data.split_tokens["train"], n_micro * self.batch_size,
                                                self.block_size, iter_num)
            if wrapped:  # every row starts its stretch over: what XL remembers no longer precedes it
                for memory in self.memories:
                    memory.reset()
            draws = [starts[m * self.batch_size:(m + 1) * self.batch_size] for m in range(n_micro)]
            return draws[self.rank::self.world_size]
        n = len(self.data.lines.splits["train"]) if self.data.lines is not None else \
            self.data.split_tokens["train"] - self.block_size  # the last start that leaves a whole window
        draws = [torch.randint(n, (self.batch_size,), generator=self.generator).tolist()
                 for _ in range(n_micro)]
        return draws[self.rank::self.world_size]

    def eval_plan(self, split, eval_iters, every_rank_alike=False):
        """The batches one evaluation of `split` reads on this rank, as (offsets, counted, wrapped):
        eval_iters batches whose windows are spread evenly over the whole split, the same at every
        eval (successive evals compare like with like, with less noise than random windows, and
        the training stream is untouched); each rank takes every world_size-th, so the sums
        added over the ranks are the same for any number of processes. every_rank_alike (FSDP,
        where a forward is collective): every rank reads as many, the extra ones (batch 0 again)
        not counted. data_order='sequential': every rank reads all eval_iters batches in order,
        each row continuing its stretch, `wrapped` where the rows start over."""
        if self.data_order == "sequential":
            plan = []
            for i in range(eval_iters):
                starts, wrapped = sequential_starts(self.data.split_tokens[split], self.batch_size,
                                                    self.block_size, i)
                plan.append((starts, True, wrapped))
            return plan
        n_windows = eval_iters * self.batch_size
        offsets = self.data.lines.eval_lines(split, n_windows) if self.data.lines is not None else \
            eval_offsets(self.data.path(split), self.data.token_dtype, n_windows, self.block_size)
        batches = list(range(eval_iters)[self.rank::self.world_size])
        if every_rank_alike:
            batches += [-1] * (-(-eval_iters // self.world_size) - len(batches))
        return [(offsets[max(i, 0) * self.batch_size:(max(i, 0) + 1) * self.batch_size], i >= 0, False)
                for i in batches]
