"""
Writing a prepared text dataset: read and clean the text (Gutenberg header, BOM, CRLF), encode
it (tokenizer.py), write train.bin / val.bin / meta.json atomically. The data/*/prepare.py
scripts are thin front ends to prepare_char and prepare_bpe; reading the result back is
dataloader.py's job. To build a dataset run its prepare script, e.g.

    python data/don_char/prepare.py                      # downloads the text if it can
    python data/don_char/prepare.py --input=PATH.txt     # or use a text file you already have

A prepared dataset folder holds:
    train.bin, val.bin   raw token ids, one numpy dtype (meta["dtype"]), no header
    meta.json            how to turn those ids back into text (see write_meta)

"""

import argparse
import json
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from smallgpt.dataloader import META_VERSION
from smallgpt.tokenizer import Tokenizer


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
    """First (1 - val_fraction) of the tokens for training, the rest for validation."""
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
    tokenizer     "char" or "tiktoken"
    encoding      tiktoken only: the encoding name, e.g. "gpt2"
    vocab_size    number of token ids
    dtype         "uint16" or "uint32", the dtype of train.bin / val.bin
    chars         char only: token id i is chars[i]
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
# tokenizers


# ----------------------------------------------------------------------------------------------
# the shared bodies of data/*/prepare.py


def _parse_prepare_args(dataset_dir, url, argv, bpe):
    parser = argparse.ArgumentParser(description=f"prepare the {os.path.basename(dataset_dir)} dataset: "
                                                 f"write train.bin, val.bin and meta.json next to this script")
    parser.add_argument("--input", default=None, help="read this UTF-8 text file instead of input.txt / the url")
    parser.add_argument("--url", default=url, help="where to download input.txt from when it is missing")
    if bpe:
        parser.add_argument("--encoding", default="gpt2", help="tiktoken encoding name, e.g. gpt2 or cl100k_base")
    return parser.parse_args(argv)


def _finish(dataset_dir, ids, meta, dtype):
    """Split, write the bins and meta.json, print the summary."""
    train_ids, val_ids = split_ids(ids)
    write_bins(dataset_dir, train_ids, val_ids, dtype)
    meta.update(train_tokens=len(train_ids), val_tokens=len(val_ids))
    write_meta(dataset_dir, meta)
    print(f"train has {len(train_ids):,} tokens, val has {len(val_ids):,} tokens ({dtype})")
    written = [_shown(os.path.join(dataset_dir, name)) for name in ("train.bin", "val.bin", "meta.json")]
    print("wrote " + ", ".join(written))


def prepare_char(dataset_dir, url, argv=None):
    """Character-level dataset: the vocabulary is every distinct character of the text, sorted."""
    args = _parse_prepare_args(dataset_dir, url, argv, bpe=False)
    text = read_input_text(dataset_dir, args.input, args.url)
    if not text:
        raise SystemExit("error: the text is empty after cleaning; check the input file")
    print(f"length of dataset in characters: {len(text):,}")

    # Work on code points with numpy: np.unique sorts them (the same order as sorted(set(text)))
    # and searchsorted maps each character to its index, in about a second for a few MB.
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    vocab = np.unique(codepoints)
    ids = np.searchsorted(vocab, codepoints)
    chars = [chr(c) for c in vocab]
    dtype = dtype_for_vocab(len(chars))
    shown_chars = repr("".join(chars)) if len(chars) <= 256 else f"({len(chars):,} distinct, not shown)"
    print(f"all the unique characters: {shown_chars}")
    print(f"vocab size: {len(chars):,}")

    meta = {"version": META_VERSION, "tokenizer": "char", "vocab_size": len(chars), "dtype": dtype,
            "chars": chars, "source": args.input or args.url}
    _finish(dataset_dir, ids, meta, dtype)


def prepare_bpe(dataset_dir, url, argv=None):
    """BPE dataset: tiktoken's encoding (GPT-2 by default) over the whole cleaned text."""
    args = _parse_prepare_args(dataset_dir, url, argv, bpe=True)
    try:
        tokenizer = Tokenizer.tiktoken(args.encoding)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}")
    text = read_input_text(dataset_dir, args.input, args.url)
    if not text:
        raise SystemExit("error: the text is empty after cleaning; check the input file")
    print(f"length of dataset in characters: {len(text):,}")

    ids = np.array(tokenizer.encode(text), dtype=np.int64)
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    print(f"tokenized with tiktoken {args.encoding!r}: {len(ids):,} tokens, vocab size {tokenizer.vocab_size:,}")

    meta = {"version": META_VERSION, "tokenizer": "tiktoken", "encoding": args.encoding,
            "vocab_size": tokenizer.vocab_size, "dtype": dtype, "source": args.input or args.url}
    _finish(dataset_dir, ids, meta, dtype)
