"""
Writing a prepared text dataset: read and clean the text (Gutenberg header, BOM, CRLF), cut it
into train and val text, tokenize it (tokenizer.py), write train.bin / val.bin / meta.json
atomically. The data/*/prepare.py scripts are thin front ends to prepare_text; reading the
result back is dataloader.py's job. To build a dataset run its prepare script, e.g.

    python data/don_char/prepare.py                      # downloads the text if it can
    python data/don_char/prepare.py --input=PATH.txt     # or use a text file you already have
    python data/don/prepare.py --tokenizer=bpe --vocab_size=2048 --dataset=don_bpe2k
                                                         # a BPE of the book's own: data/don_bpe2k/

Every script takes --tokenizer=char|bytes|bpe|tiktoken (its default is what it always wrote):
the tokenizer is a choice made when the data is prepared, and everything after (train.py,
sample.py, eval.py, export.py) reads it from meta.json, or from the checkpoint.

A prepared dataset folder holds:
    train.bin, val.bin   raw token ids, one numpy dtype (meta["dtype"]), no header
    meta.json            how to turn those ids back into text (see write_meta)
    tokenizer.json       --tokenizer=bpe only: the BPE, learned from the train text alone

"""

import argparse
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from smallgpt.dataloader import META_VERSION
from smallgpt.tokenizer import BPE_MIN_VOCAB, KINDS, Tokenizer, json_sha256, train_bpe


# Project Gutenberg wraps each book in a license header and footer, e.g.
#   *** START OF THE PROJECT GUTENBERG EBOOK DON QUIXOTE ***
#   *** END OF THE PROJECT GUTENBERG EBOOK DON QUIXOTE ***
# (older files say "THIS PROJECT GUTENBERG EBOOK"; some footers are indented).
_GUTENBERG_START = re.compile(r"^\s*\*\*\*\s*START OF\b.*PROJECT GUTENBERG", re.IGNORECASE)
_GUTENBERG_END = re.compile(r"^\s*\*\*\*\s*END OF\b.*PROJECT GUTENBERG", re.IGNORECASE)


def dtype_for_vocab(vocab_size: int) -> str:
    """The smallest numpy dtype we store token ids in: 2 bytes per token when the ids fit."""
    return "uint16" if vocab_size <= 65535 else "uint32"


def _shown(path):
    """A path as the user would type it: relative when it lies under the working directory."""
    rel = os.path.relpath(os.path.abspath(path))
    return os.path.abspath(path) if rel.startswith("..") else rel


# ----------------------------------------------------------------------------------------------
# reading and cleaning text


def clean_text(text: str, name: str = "input") -> str:
    """Strip a BOM, turn CRLF / CR into LF and, for Project Gutenberg files, keep only the book."""
    # A BOM would become a token of its own; CRLF would double every line break the model sees.
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n").replace("\r", "\n")

    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if _GUTENBERG_START.match(line)), None)
    end = None
    if start is not None:
        end = next((i for i in range(start + 1, len(lines)) if _GUTENBERG_END.match(lines[i])), None)
    if start is None:
        return text
    if end is None:
        print(f"gutenberg: warning: {name} has a START marker but no END marker; kept the whole text")
        return text

    body = lines[start + 1:end]
    while body and not body[0].strip():
        body.pop(0)
    while body and not body[-1].strip():
        body.pop()
    cropped = "\n".join(body) + "\n" if body else ""
    print(f"gutenberg: kept the text between the START/END markers of {name} "
          f"({len(cropped):,} of {len(text):,} chars)")
    return cropped


def _decode_utf8(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SystemExit(f"error: {_shown(path)} is not valid UTF-8 (byte {e.start}: {e.reason}); "
                         f"re-save it as UTF-8 and run again")


def read_utf8(path) -> str:
    """A UTF-8 text file as a string, BOM dropped and CRLF / CR made LF (nothing else cleaned)."""
    with open(path, "rb") as f:
        text = _decode_utf8(f.read(), path)
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def read_input_text(dataset_dir: str, input_path: str | None, url: str | None) -> str:
    """The cleaned text of a dataset: --input=PATH, else <dataset_dir>/input.txt, else download url."""
    local_path = os.path.join(dataset_dir, "input.txt")
    if input_path is not None:
        if os.path.isdir(input_path):
            raise SystemExit(f"error: --input={input_path} is a folder; pass the text file itself")
        if not os.path.isfile(input_path):
            raise SystemExit(f"error: --input file not found: {input_path}")
        path = input_path
        with open(path, "rb") as f:
            raw = f.read()
    elif os.path.isfile(local_path):
        path = local_path
        with open(path, "rb") as f:
            raw = f.read()
    else:
        if not url:
            raise SystemExit(f"error: no text found: place it at {_shown(local_path)} or pass --input=PATH")
        path = local_path
        print(f"downloading {url} -> {_shown(local_path)}")
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                raw = response.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise SystemExit(f"error: could not download {url} ({reason}). You seem to be offline: "
                             f"place the text at {_shown(local_path)} or pass --input=PATH")
        # Keep the raw bytes, exactly as served, so a re-run is offline and cleans the same way.
        _write_atomic(local_path, lambda f: f.write(raw))
    print(f"reading {_shown(path)} ({len(raw):,} bytes)")
    return clean_text(_decode_utf8(raw, path), name=_shown(path))


def hub_reachable(timeout=3.0):
    """Whether the Hugging Face Hub (or the HTTPS proxy in use) accepts a connection within
    `timeout` seconds. Asked before a hub download, so an offline machine gets one line at once
    instead of the hub client's retries (~25 s of warnings). HF_HUB_OFFLINE=1 means no."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urllib.parse.urlsplit(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except (OSError, ValueError, TypeError):  # no DNS, refused, timed out, malformed address
        return False


# ----------------------------------------------------------------------------------------------
# writing and reading a prepared dataset folder


def _write_atomic(path, write):
    """Write through a temp file in the same folder, then rename: a crash never leaves half a file."""
    # Same folder, so os.replace is a rename on one filesystem; plain open() keeps the umask permissions.
    tmp_path = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp_path, "wb") as f:
            write(f)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def split_ids(ids, val_fraction=0.1):
    """First (1 - val_fraction) of the tokens (or characters) for training, the rest for validation."""
    n_train = int(len(ids) * (1 - val_fraction))
    return ids[:n_train], ids[n_train:]


def write_bins(dataset_dir, train_ids, val_ids, dtype: str, test_ids=None):
    """Write train.bin and val.bin (and test.bin, for line datasets) as raw arrays of `dtype`
    (what train.py memory-maps)."""
    limit = np.iinfo(dtype).max
    splits = (("train.bin", train_ids), ("val.bin", val_ids)) + \
        ((("test.bin", test_ids),) if test_ids is not None else ())
    for name, ids in splits:
        ids = np.asarray(ids)
        if ids.size:
            assert ids.min() >= 0 and ids.max() <= limit, \
                f"{name}: ids span {ids.min()}..{ids.max()}, which does not fit {dtype}"
        data = ids.astype(dtype)
        _write_atomic(os.path.join(dataset_dir, name), lambda f: f.write(data.tobytes()))


def write_meta(dataset_dir, meta: dict):
    """Write meta.json. Keys (all JSON):

    version       META_VERSION
    tokenizer     "char", "bytes", "bpe" or "tiktoken" (tokenizer.py)
    encoding      tiktoken only: the encoding name, e.g. "gpt2"
    vocab_size    number of token ids
    dtype         "uint16" or "uint32", the dtype of train.bin / val.bin
    chars         char only: token id i is chars[i]
    tokenizer_file, tokenizer_sha256   bpe only: "tokenizer.json" and the sha256 of its text,
                  checked on every load (dataloader.load_meta)
    train_tokens, val_tokens   token counts of the two .bin files
    source        where the text came from
    lines         line datasets only (lines.py): test_tokens too, and this key saying where
                  the end of line is, the answer separator, the line counts, the longest line
    """
    assert meta.get("version") == META_VERSION, f"meta version {meta.get('version')!r} != {META_VERSION}"
    # One key per line, and the (possibly long) chars list on a single line, so it stays readable.
    lines = [f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}" for key, value in meta.items()]
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    _write_atomic(os.path.join(dataset_dir, "meta.json"), lambda f: f.write(text.encode("utf-8")))


# ----------------------------------------------------------------------------------------------
# tokenizers: chosen on the command line, learned (bpe) from the train text only


def tokenizer_arguments(parser, default):
    """--tokenizer, --vocab_size, --encoding: what every prepare script takes."""
    parser.add_argument("--tokenizer", default=default,
                        help=f"{', '.join(KINDS)} (default {default}); bpe is learned from the train "
                             f"split and needs --vocab_size")
    parser.add_argument("--vocab_size", type=int, default=None,
                        help=f"--tokenizer=bpe: tokens in the vocabulary, at least {BPE_MIN_VOCAB} "
                             f"(256 bytes + <|endoftext|>), e.g. 2048")
    parser.add_argument("--encoding", default=None,
                        help="--tokenizer=tiktoken: the encoding, gpt2 (default) or e.g. cl100k_base")


def check_tokenizer_arguments(args):
    """One-line SystemExit for a tokenizer choice that can't work, before anything is read or
    written (a tiktoken encoding is loaded here, so missing files are found at once too)."""
    if args.tokenizer not in KINDS:
        raise SystemExit(f"error: --tokenizer={args.tokenizer}: use one of {', '.join(KINDS)}")
    if args.tokenizer == "bpe":
        if args.vocab_size is None:
            raise SystemExit("error: --tokenizer=bpe needs --vocab_size=N, the tokens to learn "
                             f"(at least {BPE_MIN_VOCAB}; e.g. 2048)")
        if args.vocab_size < BPE_MIN_VOCAB:
            raise SystemExit(f"error: --vocab_size={args.vocab_size} is below the {BPE_MIN_VOCAB} "
                             f"tokens a byte-level BPE starts with (256 bytes + <|endoftext|>); "
                             f"use {BPE_MIN_VOCAB} or more, e.g. 2048")
    elif args.vocab_size is not None:
        raise SystemExit(f"error: --vocab_size is for --tokenizer=bpe; a {args.tokenizer} "
                         f"vocabulary's size is fixed (leave --vocab_size out)")
    if args.encoding is not None and args.tokenizer != "tiktoken":
        raise SystemExit(f"error: --encoding is for --tokenizer=tiktoken, not {args.tokenizer}")
    args.encoding = args.encoding or "gpt2"
    if args.tokenizer == "tiktoken":
        try:
            Tokenizer.tiktoken(args.encoding)
        except (ValueError, RuntimeError) as e:
            raise SystemExit(f"error: {e}")


def learned_tokenizer(args, train_texts, separator=None):
    """(Tokenizer, its meta.json fields) for args.tokenizer other than char. A bpe is trained
    here on train_texts (the train split only: val must be text the tokenizer never saw, as it
    is for the model); its tokenizer.json text rides along in the fields as "tokenizer_json"
    (write_dataset writes it out). separator: see tokenizer.train_bpe."""
    assert args.tokenizer != "char", "char vocabularies are built by the caller"
    if args.tokenizer == "bytes":
        return Tokenizer("bytes", 256), {"tokenizer": "bytes", "vocab_size": 256}
    if args.tokenizer == "tiktoken":
        tokenizer = Tokenizer.tiktoken(args.encoding)
        return tokenizer, {"tokenizer": "tiktoken", "encoding": args.encoding,
                           "vocab_size": tokenizer.vocab_size}
    started = time.time()
    bpe_json = train_bpe(train_texts, args.vocab_size, separator)
    tokenizer = Tokenizer("bpe", bpe_json=bpe_json)
    print(f"trained a byte-level BPE on the train split in {time.time() - started:.1f}s: "
          f"{tokenizer.vocab_size:,} tokens")
    if tokenizer.vocab_size < args.vocab_size:
        print(f"note: the train split has no pair left that occurs twice after "
              f"{tokenizer.vocab_size:,} tokens, fewer than --vocab_size={args.vocab_size:,}; "
              f"the vocabulary is that size")
    return tokenizer, {"tokenizer": "bpe", "vocab_size": tokenizer.vocab_size,
                       "tokenizer_file": "tokenizer.json",
                       "tokenizer_sha256": json_sha256(bpe_json), "tokenizer_json": bpe_json}


def output_folder(name, data_root):
    """--dataset=NAME: a folder under data/, or a path when NAME has a '/' (made when written)."""
    return name if os.sep in name or "/" in name else os.path.join(data_root, name)


def insert_after(mapping, key, new):
    """A copy of `mapping` with the items of `new` placed right after `key`."""
    out = {}
    for k, v in mapping.items():
        out[k] = v
        if k == key:
            out.update(new)
    return out


def write_dataset(folder, splits: dict, meta: dict):
    """Write each split's ids (train.bin, val.bin, test.bin), tokenizer.json for a bpe (taken
    out of meta's "tokenizer_json") and meta.json last, once all it describes is on disk."""
    os.makedirs(folder, exist_ok=True)
    write_bins(folder, splits["train"], splits["val"], meta["dtype"], test_ids=splits.get("test"))
    bpe_json = meta.pop("tokenizer_json", None)
    tokenizer_path = os.path.join(folder, "tokenizer.json")
    if bpe_json is not None:
        _write_atomic(tokenizer_path, lambda f: f.write(bpe_json.encode("utf-8")))
    elif os.path.isfile(tokenizer_path):  # of an earlier bpe run: would only mislead a reader
        os.remove(tokenizer_path)
        print(f"removed {_shown(tokenizer_path)}, left by an earlier --tokenizer=bpe run")
    counts = {f"{split}_tokens": len(ids) for split, ids in splits.items()}
    write_meta(folder, insert_after(meta, "source", counts))
    return [os.path.join(folder, name) for name in (*(f"{s}.bin" for s in splits),
                                                    *(["tokenizer.json"] if bpe_json else []),
                                                    "meta.json")]


# ----------------------------------------------------------------------------------------------
# the shared body of data/*/prepare.py


def _parse_prepare_args(dataset_dir, url, argv, tokenizer):
    parser = argparse.ArgumentParser(description=f"prepare the {os.path.basename(dataset_dir)} dataset: "
                                                 f"write train.bin, val.bin and meta.json next to this script")
    parser.add_argument("--input", default=None, help="read this UTF-8 text file instead of input.txt / the url")
    parser.add_argument("--url", default=url, help="where to download input.txt from when it is missing")
    parser.add_argument("--dataset", default=None,
                        help="write data/NAME/ (or this folder, if it has a '/') instead of next "
                             "to this script, e.g. one folder per tokenizer")
    tokenizer_arguments(parser, tokenizer)
    return parser.parse_args(argv)


def prepare_text(dataset_dir, url, argv=None, tokenizer="char"):
    """data/<name>/prepare.py: read and clean the text, cut it at 90% of its characters into
    train and val text (nanoGPT's shakespeare/prepare.py cuts there too), tokenize each part
    and write the dataset. One cut for every tokenizer, so val is the same text whatever the
    tokenizer, and bits per byte compare on the same bytes. `tokenizer` is the script's default."""
    args = _parse_prepare_args(dataset_dir, url, argv, tokenizer)
    check_tokenizer_arguments(args)
    folder = output_folder(args.dataset, os.path.dirname(dataset_dir)) if args.dataset else dataset_dir
    text = read_input_text(dataset_dir, args.input, args.url)
    if not text:
        raise SystemExit("error: the text is empty after cleaning; check the input file")
    print(f"length of dataset in characters: {len(text):,}")
    train_text, val_text = split_ids(text)

    if args.tokenizer == "char":
        # The vocabulary is every distinct character of the whole text, sorted (val included: a
        # character only val has would otherwise have no id). numpy on code points: np.unique
        # sorts them as sorted(set(text)) does, searchsorted maps each character to its index.
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        vocab = np.unique(codepoints)
        ids = np.searchsorted(vocab, codepoints)
        chars = [chr(c) for c in vocab]
        shown_chars = repr("".join(chars)) if len(chars) <= 256 else f"({len(chars):,} distinct, not shown)"
        print(f"all the unique characters: {shown_chars}")
        print(f"vocab size: {len(chars):,}")
        fields = {"tokenizer": "char", "vocab_size": len(chars), "chars": chars}
        splits = {"train": ids[:len(train_text)], "val": ids[len(train_text):]}
    else:
        tokenizer, fields = learned_tokenizer(args, [train_text])
        splits = {name: np.array(tokenizer.encode(part), dtype=np.int64)
                  for name, part in (("train", train_text), ("val", val_text))}
        n_bytes = len(text.encode("utf-8"))
        n_tokens = len(splits["train"]) + len(splits["val"])
        print(f"tokenized with {tokenizer.name}: {n_tokens:,} tokens, vocab size "
              f"{tokenizer.vocab_size:,}, {n_bytes / n_tokens:.2f} bytes per token")

    dtype = dtype_for_vocab(fields["vocab_size"])
    meta = {"version": META_VERSION, **insert_after(fields, "vocab_size", {"dtype": dtype}),
            "source": args.input or args.url}
    written = write_dataset(folder, splits, meta)
    print(f"train has {len(splits['train']):,} tokens, val has {len(splits['val']):,} tokens ({dtype})")
    print("wrote " + ", ".join(_shown(path) for path in written))


def prepare_char(dataset_dir, url, argv=None):
    """A character-level dataset unless --tokenizer says otherwise (data/don_char, ...)."""
    prepare_text(dataset_dir, url, argv, tokenizer="char")


def prepare_bpe(dataset_dir, url, argv=None):
    """GPT-2's BPE (tiktoken) unless --tokenizer says otherwise (data/don, data/shakespeare)."""
    prepare_text(dataset_dir, url, argv, tokenizer="tiktoken")
