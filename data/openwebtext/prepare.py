"""
OpenWebText (or any large text corpus) as GPT-2 BPE tokens, written to train.bin / val.bin with
flat memory use, whatever the corpus size.

    python data/openwebtext/prepare.py                        # Skylion007/openwebtext from the HF hub
    python data/openwebtext/prepare.py --dataset=NAME --split=train --text_column=text
    python data/openwebtext/prepare.py --files='corpus/*.jsonl'   # local files: works offline
    python data/openwebtext/prepare.py --files='books/*.txt' --val_fraction=0.01 --out_dir=data/books

--files takes one glob of .txt files (one document per file), .jsonl/.json files (one document
per row, in --text_column) or .parquet files (same). Every document is tokenized with tiktoken's
encode_ordinary and followed by the end-of-text token, so the model sees where documents end.
A random --val_fraction of the documents (seeded) goes to val.bin.

Memory: tokenizing goes through dataset.map, which keeps its results on disk (the Hugging Face
cache, HF_DATASETS_CACHE), and write_tokens_memmap copies --write_chunk_docs documents at a time
into a np.memmap, so RAM stays flat; the cache needs roughly 2x the size of train.bin on disk.
"""

import argparse
import glob
import math
import os
import sys

import numpy as np
import pyarrow.compute as pc
from tqdm import tqdm

DATASET_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(DATASET_DIR)))  # the repo root, for smallgpt/prepare.py

from configurator import make_folder  # noqa: E402
from smallgpt.dataloader import META_VERSION  # noqa: E402
from smallgpt.tokenizer import Tokenizer  # noqa: E402
from smallgpt.prepare import dtype_for_vocab, hub_reachable, write_meta  # noqa: E402

# How datasets' load_dataset reads each kind of local file, and the keyword arguments it needs.
LOADERS = {
    ".txt": ("text", {"sample_by": "document"}),  # a whole file is one document, not one per line
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--dataset", default="Skylion007/openwebtext", help="Hugging Face hub dataset name")
    parser.add_argument("--split", default="train", help="which split of --dataset to read")
    parser.add_argument("--text_column", default="text", help="column holding the documents (.json/.jsonl/.parquet)")
    parser.add_argument("--files", default=None, help="glob of local .txt/.jsonl/.json/.parquet files (instead of --dataset)")
    parser.add_argument("--num_proc", type=int, default=min(8, os.cpu_count() or 1), help="processes for loading and tokenizing")
    parser.add_argument("--val_fraction", type=float, default=0.0005, help="fraction of documents for val.bin")
    parser.add_argument("--seed", type=int, default=2357, help="seed of the train/val shuffle")
    parser.add_argument("--encoding", default="gpt2", help="tiktoken encoding name (cl100k_base gives uint32 ids)")
    parser.add_argument("--out_dir", default=DATASET_DIR, help="where train.bin, val.bin and meta.json go")
    parser.add_argument("--write_chunk_docs", type=int, default=1024, help="documents copied to disk per step")
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val_fraction must be between 0 and 1, got {args.val_fraction}")
    if args.num_proc < 1 or args.write_chunk_docs < 1:
        parser.error("--num_proc and --write_chunk_docs must be at least 1")
    return args


def load_corpus(args, offline=False):
    """The documents as a datasets.Dataset with a text column; returns (dataset, text_column, source).
    offline=True: the hub can't be reached, so only the local cache is read."""
    from datasets import load_dataset

    if args.files is None:
        try:
            dataset = load_dataset(args.dataset, split=args.split, num_proc=args.num_proc)
        except Exception as e:  # offline, unknown name, gated dataset, missing split, ...
            if offline:
                raise SystemExit(f"error: {args.dataset!r} is not in the local Hugging Face cache and "
                                 f"the hub can't be reached (offline?); use local files: --files=GLOB")
            reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise SystemExit(f"error: could not load {args.dataset!r} (split {args.split!r}) from the Hugging Face "
                             f"hub ({type(e).__name__}: {reason}). Offline? use local files: --files=GLOB")
        return dataset, args.text_column, args.dataset

    files = sorted(glob.glob(args.files, recursive=True))
    if not files:
        raise SystemExit(f"error: --files={args.files} matched no files; check the pattern (quote it in the shell)")
    extensions = sorted({os.path.splitext(f)[1].lower() for f in files})
    if len(extensions) != 1 or extensions[0] not in LOADERS:
        raise SystemExit(f"error: --files must all be one of {', '.join(LOADERS)}; got {', '.join(extensions)}")
    loader, loader_kwargs = LOADERS[extensions[0]]
    text_column = "text" if loader == "text" else args.text_column  # the text loader always names it 'text'
    print(f"loading {len(files):,} {extensions[0]} file(s) matching {args.files}")
    dataset = load_dataset(loader, data_files=files, split="train",
                           num_proc=min(args.num_proc, len(files)), **loader_kwargs)
    return dataset, text_column, args.files


def tokenize_batch(batch, text_column, encoding_name):
    """encode_ordinary each document and append end-of-text. Runs inside dataset.map's worker processes."""
    import tiktoken  # each worker loads (and caches) the encoding itself

    encoding = tiktoken.get_encoding(encoding_name)
    ids = [doc + [encoding.eot_token] for doc in encoding.encode_ordinary_batch(batch[text_column])]
    return {"ids": ids, "len": [len(doc) for doc in ids]}


def write_tokens_memmap(path, dataset, dtype, chunk_docs):
    """Concatenate the 'ids' of every row of `dataset` into the raw array file `path`.

    The total comes from the 'len' column, so the memmap is sized once; rows are then copied
    chunk_docs at a time, so only one chunk is ever in memory. Returns the number of tokens."""
    assert "ids" in dataset.column_names and "len" in dataset.column_names, dataset.column_names
    total = int(pc.sum(dataset.with_format("arrow")["len"]).as_py() or 0)
    tmp_path = path + ".tmp"  # renamed at the end, so a crash never leaves a short train.bin behind
    if total == 0:
        open(tmp_path, "wb").close()  # np.memmap cannot map an empty file
    else:
        out = np.memmap(tmp_path, dtype=dtype, mode="w+", shape=(total,))
        batches = dataset.select_columns(["ids"]).with_format("arrow").iter(batch_size=chunk_docs)
        position = 0
        for batch in tqdm(batches, total=math.ceil(len(dataset) / chunk_docs), desc=f"writing {os.path.basename(path)}"):
            chunk = pc.list_flatten(batch["ids"]).to_numpy()  # (tokens in these chunk_docs documents,)
            out[position:position + len(chunk)] = chunk
            position += len(chunk)
        assert position == total, f"wrote {position} tokens but the 'len' column sums to {total}"
        out.flush()
        del out  # close the mapping before renaming
    os.replace(tmp_path, path)
    return total


def main(argv=None):
    args = parse_args(argv)
    try:
        tokenizer = Tokenizer.tiktoken(args.encoding)  # fail early, before any download
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}")
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    try:
        make_folder(args.out_dir, "out_dir")
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    # Offline, the hub client retries for ~25 s before failing; read the local cache only instead
    # (huggingface_hub reads HF_HUB_OFFLINE when it is imported, so set it before datasets is).
    offline = args.files is None and not hub_reachable()
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"

    from datasets import Features, List, Value

    dataset, text_column, source = load_corpus(args, offline)
    if text_column not in dataset.column_names:
        raise SystemExit(f"error: no column {text_column!r}; the columns are {dataset.column_names}; "
                         f"pass --text_column=NAME")
    if len(dataset) < 2:
        raise SystemExit(f"error: found {len(dataset)} document(s); need at least 2 to make a train and a val split")
    print(f"{len(dataset):,} documents")

    split = dataset.train_test_split(test_size=args.val_fraction, seed=args.seed, shuffle=True)
    split["val"] = split.pop("test")
    # Store ids in the final dtype: the on-disk cache is 4x smaller than the default int64 lists.
    features = Features({"ids": List(Value(dtype)), "len": Value("int64")})
    tokenized = split.map(tokenize_batch, batched=True, remove_columns=dataset.column_names,
                          fn_kwargs={"text_column": text_column, "encoding_name": args.encoding},
                          features=features, num_proc=args.num_proc, desc="tokenizing")

    counts = {}
    for name, part in tokenized.items():
        path = os.path.join(args.out_dir, f"{name}.bin")
        counts[name] = write_tokens_memmap(path, part, dtype, args.write_chunk_docs)
        print(f"{name}: {len(part):,} documents, {counts[name]:,} tokens -> {path}")

    write_meta(args.out_dir, {
        "version": META_VERSION, "tokenizer": "tiktoken", "encoding": args.encoding,
        "vocab_size": tokenizer.vocab_size, "dtype": dtype,
        "train_tokens": counts["train"], "val_tokens": counts["val"], "source": source,
    })
    print(f"vocab size {tokenizer.vocab_size:,} ({args.encoding}), dtype {dtype}; "
          f"wrote train.bin, val.bin, meta.json in {args.out_dir}")


if __name__ == "__main__":
    main()
