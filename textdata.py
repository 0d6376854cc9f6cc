"""
textdata.py: the one place that turns a text file into token ids and back.

Used by the dataset scripts (data/*/prepare.py), by train.py (to read meta.json) and by sample.py
(to encode the prompt and to print generated tokens as they arrive). It is a library, not a
script; to build a dataset run its prepare script, e.g.

    python data/don_char/prepare.py                      # downloads the text if it can
    python data/don_char/prepare.py --input=PATH.txt     # or use a text file you already have

A prepared dataset folder holds:
    train.bin, val.bin   raw token ids, one numpy dtype (meta["dtype"]), no header
    meta.json            how to turn those ids back into text (see write_meta)

Older nanoGPT folders with a meta.pkl still load, through a pickle reader that refuses to
import anything, so a meta.pkl from the internet cannot run code on your machine.
"""

import argparse
import codecs
import json
import os
import pickle
import re
import socket
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

META_VERSION = 1  # bump when meta.json changes meaning; load_meta refuses other versions

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
    lines         line datasets only (linedata.py): test_tokens too, and this key saying where
                  the end of line is, the answer separator, the line counts, the longest line
    """
    assert meta.get("version") == META_VERSION, f"meta version {meta.get('version')!r} != {META_VERSION}"
    # One key per line, and the (possibly long) chars list on a single line, so it stays readable.
    lines = [f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}" for key, value in meta.items()]
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    _write_atomic(os.path.join(dataset_dir, "meta.json"), lambda f: f.write(text.encode("utf-8")))


def _check_meta(meta, path):
    """One-line ValueError naming the file when meta.json is not what write_meta writes."""
    fix = "re-create it with the dataset's prepare.py"
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}; {fix}")
    if meta.get("version") != META_VERSION:
        raise ValueError(f"{path}: meta version {meta.get('version')!r}, this code reads version {META_VERSION}; {fix}")
    if meta.get("tokenizer") not in ("char", "tiktoken"):
        raise ValueError(f"{path}: tokenizer must be 'char' or 'tiktoken', got {meta.get('tokenizer')!r}; {fix}")
    if not isinstance(meta.get("vocab_size"), int) or meta["vocab_size"] <= 0:
        raise ValueError(f"{path}: vocab_size must be a positive integer, got {meta.get('vocab_size')!r}; {fix}")
    if meta.get("dtype") not in ("uint16", "uint32"):
        raise ValueError(f"{path}: dtype must be 'uint16' or 'uint32', got {meta.get('dtype')!r}; {fix}")
    if meta["tokenizer"] == "char":
        chars = meta.get("chars")
        if not isinstance(chars, list) or len(chars) != meta["vocab_size"] \
                or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise ValueError(f"{path}: 'chars' must list vocab_size={meta['vocab_size']} single characters; {fix}")
    elif not isinstance(meta.get("encoding"), str):
        raise ValueError(f"{path}: a tiktoken meta needs an 'encoding' name such as 'gpt2'; {fix}")


def load_meta(dataset_dir) -> dict | None:
    """meta.json of a dataset folder, else its nanoGPT meta.pkl in the same form, else None (GPT-2 BPE)."""
    json_path = os.path.join(dataset_dir, "meta.json")
    pkl_path = os.path.join(dataset_dir, "meta.pkl")
    if os.path.exists(json_path):
        try:
            with open(json_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{json_path}: not valid JSON ({e}); re-create it with the dataset's prepare.py")
        _check_meta(meta, json_path)
        return meta
    if os.path.exists(pkl_path):
        old = safe_unpickle(pkl_path)
        fix = "re-create it with the dataset's prepare.py"
        if not isinstance(old, dict) or not isinstance(old.get("vocab_size"), int) \
                or not isinstance(old.get("itos"), dict):
            raise ValueError(f"{pkl_path}: expected a dict with 'vocab_size' and 'itos' (nanoGPT char meta); {fix}")
        try:
            chars = [old["itos"][i] for i in range(old["vocab_size"])]
        except KeyError as e:
            raise ValueError(f"{pkl_path}: itos has no entry for token id {e}; {fix}")
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
    """The number of tokens in a .bin file. ValueError, naming the file, when its size is not a
    whole number of tokens: numpy would refuse to map it with a traceback."""
    size, itemsize = os.path.getsize(bin_path), np.dtype(dtype).itemsize
    if size % itemsize:
        raise ValueError(f"{bin_path} is {size:,} bytes, not a whole number of {np.dtype(dtype).name} "
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
        raise ValueError(f"data_order='sequential' cuts {n_tokens:,} tokens into {n_rows} rows of "
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


class _RefusedGlobal(ValueError):
    pass


def safe_unpickle(path):
    """pickle.load that cannot run code: plain data only, ValueError for anything else."""
    with open(path, "rb") as f:
        try:
            return _PlainDataUnpickler(f, path).load()
        except _RefusedGlobal:
            raise
        except Exception as e:  # truncated or corrupt: EOFError, UnpicklingError, ValueError, ...
            raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {e}); "
                             f"re-create it with the dataset's prepare.py")


# ----------------------------------------------------------------------------------------------
# tokenizers


def _as_int_list(ids):
    """Token ids from a list, numpy array or torch tensor, as plain Python ints (tiktoken wants those)."""
    return ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]


def _load_tiktoken(name):
    import tiktoken  # imported here so character-level datasets work without it

    if name not in tiktoken.list_encoding_names():
        raise ValueError(f"unknown tiktoken encoding {name!r}; choose one of {tiktoken.list_encoding_names()}")
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # offline and nothing cached: requests / OSError from tiktoken's download
        # requests' own text is a page of pool and DNS detail; its class name says enough
        reason = type(e).__name__ if "Connection" in type(e).__name__ else \
            (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise RuntimeError(f"tiktoken could not load the {name!r} files ({reason}); offline? set "
                           f"TIKTOKEN_CACHE_DIR to a folder that holds them (on a machine with "
                           f"internet, TIKTOKEN_CACHE_DIR=DIR python -c \"import tiktoken; "
                           f"tiktoken.get_encoding('{name}')\" fills DIR; copy it over)") from None


class Tokenizer:
    """Text <-> token ids: character level (a list of chars) or a tiktoken BPE encoding."""

    def __init__(self, kind, vocab_size, chars=None, encoding=None):
        assert kind in ("char", "tiktoken"), kind
        self.kind = kind
        self.vocab_size = vocab_size
        self.chars = chars  # char: token id i is chars[i]
        self.encoding = encoding  # tiktoken: the tiktoken.Encoding
        self.name = encoding.name if encoding is not None else "char"
        self.eot_token = encoding.eot_token if encoding is not None else None
        self._stoi = {c: i for i, c in enumerate(chars)} if chars is not None else None

    @classmethod
    def from_meta(cls, meta: dict | None) -> "Tokenizer":
        """The tokenizer a dataset was prepared with; no meta means GPT-2 BPE, as in nanoGPT."""
        if meta is None:
            return cls.tiktoken("gpt2")
        if meta["tokenizer"] == "char":
            return cls("char", len(meta["chars"]), chars=list(meta["chars"]))
        tokenizer = cls.tiktoken(meta["encoding"])
        if tokenizer.vocab_size != meta["vocab_size"]:
            raise ValueError(f"meta says vocab_size={meta['vocab_size']} but tiktoken {meta['encoding']!r} "
                             f"has {tokenizer.vocab_size}; re-run the dataset's prepare.py")
        return tokenizer

    @classmethod
    def tiktoken(cls, name="gpt2") -> "Tokenizer":
        encoding = _load_tiktoken(name)
        return cls("tiktoken", encoding.n_vocab, encoding=encoding)

    def same_vocabulary(self, other) -> bool:
        """Whether two tokenizers give every token id the same meaning."""
        if self.kind != other.kind:
            return False
        return self.chars == other.chars if self.kind == "char" else self.name == other.name

    def encode(self, text: str) -> list[int]:
        if self.kind == "tiktoken":
            # encode_ordinary: "<|endoftext|>" typed in a prompt is text, not the special token.
            return self.encoding.encode_ordinary(text)
        unknown = list(dict.fromkeys(c for c in text if c not in self._stoi))
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:20]) + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
            raise ValueError(f"prompt has characters not in the vocabulary: {shown} "
                             f"(the model knows {self.vocab_size} characters)")
        return [self._stoi[c] for c in text]

    def decode(self, ids) -> str:
        ids = _as_int_list(ids)
        if self.kind == "tiktoken":
            return self.encoding.decode(ids)  # a lone half of a multi-byte char becomes U+FFFD
        return "".join(self.chars[i] for i in ids)

    def decode_bytes(self, ids) -> bytes:
        ids = _as_int_list(ids)
        if self.kind == "tiktoken":
            return self.encoding.decode_bytes(ids)
        return self.decode(ids).encode("utf-8")


EOT_TEXT = "<|endoftext|>"


def encode_prompt(tokenizer, text):
    """Token ids of a prompt; '<|endoftext|>' in it is GPT-2's end-of-text token, as in nanoGPT.
    ValueError when nothing is left to condition on."""
    if tokenizer.eot_token is not None and EOT_TEXT in text:
        pieces = text.split(EOT_TEXT)
        ids = tokenizer.encode(pieces[0])
        for piece in pieces[1:]:
            ids += [tokenizer.eot_token] + tokenizer.encode(piece)
    else:
        ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the prompt is empty after encoding; give at least one character "
                         "(e.g. --start='\\n')")
    return ids


class StreamDecoder:
    """Turns tokens into text as they are generated. A BPE token can hold half of a UTF-8
    character ('🙂' is 4 bytes, often split over 2 tokens), so decoding token by token would print
    U+FFFD; instead we feed bytes through an incremental UTF-8 decoder that waits for the rest."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        # errors="replace": a model can emit byte sequences that are never valid; show U+FFFD, don't crash.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids) -> str:
        """Text that became complete with these token ids."""
        if self.tokenizer.kind == "char":
            return self.tokenizer.decode(ids)
        return self._utf8.decode(self.tokenizer.decode_bytes(ids))

    def flush(self) -> str:
        """Whatever is still held back at the end (an unfinished character comes out as U+FFFD)."""
        if self.tokenizer.kind == "char":
            return ""
        return self._utf8.decode(b"", final=True)


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
