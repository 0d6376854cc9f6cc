"""
Tests for preparing datasets (smallgpt/prepare.py, tokenizer.py, dataloader.py) and the data/*/prepare.py scripts. CPU only, offline, ~15 s.

    python -m pytest tests/test_data.py          # add -v to see each test

Prepare scripts run as subprocesses inside a temp copy of the repo layout (the smallgpt package plus
data/<name>/prepare.py), so nothing is ever written into the repo. Tests that need the real books
(NANOGPT_TEST_DATA) or GPT-2's BPE files (TIKTOKEN_CACHE_DIR) are skipped, with the reason, when
they are missing; see conftest.py.
"""

import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import smallgpt.prepare  # noqa: E402
from smallgpt.tokenizer import StreamDecoder, Tokenizer  # noqa: E402
from smallgpt.prepare import clean_text  # noqa: E402
from smallgpt.dataloader import load_meta  # noqa: E402
from conftest import needs_gpt2_bpe, skip_without_gpt2_bpe, text_file  # noqa: E402


# ----------------------------------------------------------------------------------------------
# helpers


def make_repo(tmp_path, *names):
    """A throwaway copy of the repo layout: the smallgpt package and data/<name>/prepare.py."""
    root = tmp_path / "repo"
    root.mkdir(exist_ok=True)
    if not (root / "smallgpt").exists():
        shutil.copytree(os.path.join(REPO, "smallgpt"), root / "smallgpt",
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "configurator.py"), root / "configurator.py")
    for name in names:
        (root / "data" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(REPO, "data", name, "prepare.py"), root / "data" / name / "prepare.py")
    return root


def run_prepare(root, name, *args, cwd=None, env_extra=None):
    """Run data/<name>/prepare.py of the temp layout with the current Python; by default from a
    working directory outside the layout, to check the script finds the smallgpt package on its own."""
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               HF_DATASETS_CACHE=str(root.parent / "hf_cache"), PYTHONDONTWRITEBYTECODE="1")
    env.update(env_extra or {})
    script = os.path.join(root, "data", name, "prepare.py")
    return subprocess.run([sys.executable, script, *args], cwd=cwd or root.parent, env=env,
                          capture_output=True, text=True, timeout=120)


def read_prepared(folder):
    """(meta, all token ids of train.bin + val.bin) of a prepared folder, checking sizes against meta."""
    meta = load_meta(str(folder))
    train = np.fromfile(folder / "train.bin", dtype=meta["dtype"])
    val = np.fromfile(folder / "val.bin", dtype=meta["dtype"])
    assert (len(train), len(val)) == (meta["train_tokens"], meta["val_tokens"])
    return meta, np.concatenate([train, val])


def one_line_error(proc):
    assert proc.returncode != 0, proc.stdout
    message = proc.stderr.strip()
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


@pytest.fixture
def gpt2():
    skip_without_gpt2_bpe()
    return Tokenizer.tiktoken("gpt2")


MULTIBYTE = "héllo — 日本語 🙂"


# ----------------------------------------------------------------------------------------------
# cleaning and small helpers


def test_clean_text_removes_bom_crlf_and_lone_cr(capsys):
    assert clean_text("\ufeffone\r\ntwo\rthree\n\r\n") == "one\ntwo\nthree\n\n"
    assert clean_text("a\ufeffb") == "a\ufeffb"  # only a leading BOM is a BOM
    assert capsys.readouterr().out == ""  # no Gutenberg message for a plain text


def test_clean_text_crops_gutenberg_markers(capsys):
    header = "The Project Gutenberg eBook of Tiny\r\n\r\nlicense words\r\n"
    body = "Chapter 1\r\n\r\n  It was a *** dark night.\r\nThe end."
    footer = "\r\n   *** END OF THE PROJECT GUTENBERG EBOOK TINY ***\r\n\r\nmore license\r\n"
    raw = "\ufeff" + header + "*** START OF THE PROJECT GUTENBERG EBOOK TINY ***\r\n\r\n\r\n" + body + "\r\n\r\n" + footer
    cleaned = clean_text(raw, name="tiny.txt")
    assert cleaned == "Chapter 1\n\n  It was a *** dark night.\nThe end.\n"
    out = capsys.readouterr().out
    assert out.startswith("gutenberg: kept the text between the START/END markers") and "tiny.txt" in out
    assert f"({len(cleaned):,} of {len(raw) - 1 - raw.count(chr(13) + chr(10)):,} chars)" in out

    # the older wording, lower case, and no blank lines around the body
    old = "header\n***start of this project gutenberg ebook old***\nbody line\n***End of this Project Gutenberg EBook old***\n"
    assert clean_text(old) == "body line\n"


def test_split_ids_is_90_10_in_order():
    ids = np.arange(1000)
    train, val = smallgpt.prepare.split_ids(ids)
    assert len(train) == 900 and len(val) == 100
    np.testing.assert_array_equal(np.concatenate([train, val]), ids)
    train, val = smallgpt.prepare.split_ids(list(range(7)), val_fraction=0.5)
    assert (train, val) == ([0, 1, 2], [3, 4, 5, 6])


def test_dtype_for_vocab():
    assert smallgpt.prepare.dtype_for_vocab(65) == "uint16"
    assert smallgpt.prepare.dtype_for_vocab(50257) == "uint16"
    assert smallgpt.prepare.dtype_for_vocab(65535) == "uint16"
    assert smallgpt.prepare.dtype_for_vocab(65536) == "uint32"
    assert smallgpt.prepare.dtype_for_vocab(100277) == "uint32"  # cl100k_base


def test_write_bins_refuses_ids_that_do_not_fit(tmp_path):
    with pytest.raises(AssertionError, match="does not fit uint16"):
        smallgpt.prepare.write_bins(str(tmp_path), [1, 70000], [2], "uint16")
    assert not os.path.exists(tmp_path / "train.bin")


# ----------------------------------------------------------------------------------------------
# character-level prepare


def test_char_prepare_round_trip(tmp_path):
    root = make_repo(tmp_path, "don_char")
    raw = "\ufeff" + "In a village of La Mancha,\r\nthe name of which\rI have no desire — to call to mind…\r\n" * 50
    src = tmp_path / "book.txt"
    src.write_bytes(raw.encode("utf-8"))
    # from the layout's root with a relative script path, like `python data/don_char/prepare.py`
    proc = subprocess.run([sys.executable, "data/don_char/prepare.py", f"--input={src}"], cwd=root,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert proc.returncode == 0, proc.stderr
    assert "vocab size" in proc.stdout and "train has" in proc.stdout and "meta.json" in proc.stdout

    text = clean_text(raw)
    folder = root / "data" / "don_char"
    meta, ids = read_prepared(folder)
    assert meta["tokenizer"] == "char" and meta["dtype"] == "uint16" and meta["version"] == 1
    assert meta["chars"] == sorted(set(text)) and "\r" not in meta["chars"] and "\ufeff" not in meta["chars"]
    assert meta["train_tokens"] == int(len(text) * 0.9) and meta["train_tokens"] + meta["val_tokens"] == len(text)
    tokenizer = Tokenizer.from_meta(meta)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert not os.path.exists(folder / "input.txt")  # --input never copies the text into the folder


def test_char_prepare_uint32_for_a_huge_vocabulary(tmp_path):
    # 69,952 distinct characters: every code point from U+0100 on, skipping the surrogates
    chars = [chr(c) for c in range(0x100, 0x100 + 72000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(chars) + "".join(reversed(chars[:5000]))
    src = tmp_path / "many.txt"
    src.write_text(text, encoding="utf-8")
    root = make_repo(tmp_path, "shakespeare_char")
    proc = run_prepare(root, "shakespeare_char", f"--input={src}")
    assert proc.returncode == 0, proc.stderr
    meta, ids = read_prepared(root / "data" / "shakespeare_char")
    assert meta["vocab_size"] == len(chars) > 65535 and meta["dtype"] == "uint32"
    assert ids.max() == len(chars) - 1  # the top ids really need 4 bytes
    assert Tokenizer.from_meta(meta).decode(ids) == text


def test_unknown_characters_are_listed():
    tokenizer = Tokenizer.from_meta({"tokenizer": "char", "chars": list("abc"), "vocab_size": 3})
    assert tokenizer.encode("cab") == [2, 0, 1]
    with pytest.raises(ValueError) as info:
        tokenizer.encode("abΩcéΩ")
    assert str(info.value) == "prompt has characters not in the vocabulary: 'Ω', 'é' (the model knows 3 characters)"


# ----------------------------------------------------------------------------------------------
# input errors: one line, nonzero exit, nothing written


def test_missing_input_file(tmp_path):
    root = make_repo(tmp_path, "don_char")
    message = one_line_error(run_prepare(root, "don_char", "--input=/no/such/book.txt"))
    assert message == "error: --input file not found: /no/such/book.txt"


def test_input_that_is_not_utf8(tmp_path):
    root = make_repo(tmp_path, "don_char")
    src = tmp_path / "latin1.txt"
    src.write_bytes("café olé".encode("latin-1"))
    message = one_line_error(run_prepare(root, "don_char", f"--input={src}"))
    assert "is not valid UTF-8" in message and "re-save it as UTF-8" in message
    assert not os.path.exists(root / "data" / "don_char" / "train.bin")


def test_offline_download_failure(tmp_path):
    root = make_repo(tmp_path, "don_char")
    url = "http://127.0.0.1:9/x"  # the discard port: refused at once, never real network
    message = one_line_error(run_prepare(root, "don_char", f"--url={url}"))
    assert message.startswith(f"error: could not download {url} (")
    assert "You seem to be offline: place the text at" in message
    assert "don_char/input.txt" in message and message.endswith("or pass --input=PATH")
    assert os.listdir(root / "data" / "don_char") == ["prepare.py"]


def test_download_saves_raw_input_txt(tmp_path):
    """The download path, through a file:// url: input.txt keeps the raw bytes; a re-run reads it."""
    raw = "\ufeffa\r\nbc\r\n".encode("utf-8")
    src = tmp_path / "served.txt"
    src.write_bytes(raw)
    root = make_repo(tmp_path, "don_char")
    proc = run_prepare(root, "don_char", f"--url={src.as_uri()}")
    assert proc.returncode == 0, proc.stderr
    assert "downloading" in proc.stdout
    assert (root / "data" / "don_char" / "input.txt").read_bytes() == raw
    proc = run_prepare(root, "don_char", "--url=http://127.0.0.1:9/x")  # would fail if it downloaded
    assert proc.returncode == 0, proc.stderr
    meta, ids = read_prepared(root / "data" / "don_char")
    assert Tokenizer.from_meta(meta).decode(ids) == "a\nbc\n"


# ----------------------------------------------------------------------------------------------
# meta.json / meta.pkl


def test_nanogpt_meta_pkl_loads(tmp_path):
    chars = sorted(set("hello world\n"))
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                     "stoi": {c: i for i, c in enumerate(chars)}}, f)
    np.arange(10, dtype=np.uint16).tofile(tmp_path / "train.bin")
    meta = load_meta(str(tmp_path))
    assert meta["tokenizer"] == "char" and meta["chars"] == chars and meta["dtype"] == "uint16"
    assert meta["train_tokens"] == 10 and meta["val_tokens"] is None
    tokenizer = Tokenizer.from_meta(meta)
    assert tokenizer.decode(tokenizer.encode("hello world\n")) == "hello world\n"


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_meta_pkl_is_refused(tmp_path):
    # Control: plain pickle really runs this payload, so the refusal below is what stops it.
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control")))
    assert os.path.exists(tmp_path / "control")

    pwned = tmp_path / "pwned"
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 2, "itos": {0: "a", 1: _Payload(pwned)}}, f)
    with pytest.raises(ValueError, match=r"meta.pkl: refusing to unpickle '(posix|os|nt)\.system': meta.pkl may only "
                                         r"hold plain dicts, lists, strings and numbers\. Re-create it"):
        load_meta(str(tmp_path))
    assert not os.path.exists(pwned)


def test_corrupt_meta_files_name_the_file(tmp_path):
    with open(tmp_path / "meta.pkl", "wb") as f:
        f.write(pickle.dumps({"vocab_size": 3, "itos": {0: "a"}})[:-5])  # truncated
    with pytest.raises(ValueError, match=r"meta\.pkl: not a readable pickle"):
        load_meta(str(tmp_path))

    (tmp_path / "meta.json").write_text('{"version": 1, "tokenizer": "char",')
    with pytest.raises(ValueError, match=r"meta\.json: not valid JSON"):
        load_meta(str(tmp_path))
    (tmp_path / "meta.json").write_text('{"version": 7, "tokenizer": "char"}')
    with pytest.raises(ValueError, match=r"meta\.json: meta version 7"):
        load_meta(str(tmp_path))
    os.remove(tmp_path / "meta.json")
    os.remove(tmp_path / "meta.pkl")
    assert load_meta(str(tmp_path)) is None


def test_meta_json_round_trip(tmp_path):
    meta = {"version": 1, "tokenizer": "char", "vocab_size": 4, "dtype": "uint16", "chars": ["\n", " ", '"', "é"],
            "train_tokens": 9, "val_tokens": 1, "source": "made up"}
    smallgpt.prepare.write_meta(str(tmp_path), meta)
    assert load_meta(str(tmp_path)) == meta
    assert json.loads((tmp_path / "meta.json").read_text(encoding="utf-8")) == meta
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]  # no temp file left behind


# ----------------------------------------------------------------------------------------------
# BPE


def test_stream_decoder_keeps_multibyte_characters_whole(gpt2):
    ids = gpt2.encode(MULTIBYTE)
    # The test only means something if some tokens hold part of a character.
    assert any("\ufffd" in gpt2.decode([i]) for i in ids)
    decoder = StreamDecoder(gpt2)
    pieces = [decoder.push([i]) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == MULTIBYTE
    assert not any("\ufffd" in piece for piece in pieces)

    chars = sorted(set(MULTIBYTE))
    char_tokenizer = Tokenizer.from_meta({"tokenizer": "char", "chars": chars, "vocab_size": len(chars)})
    char_decoder = StreamDecoder(char_tokenizer)
    pieces = [char_decoder.push([i]) for i in char_tokenizer.encode(MULTIBYTE)] + [char_decoder.flush()]
    assert "".join(pieces) == MULTIBYTE


def test_no_meta_means_gpt2(gpt2):
    tokenizer = Tokenizer.from_meta(None)
    assert tokenizer.kind == "tiktoken" and tokenizer.vocab_size == 50257 and tokenizer.eot_token == 50256
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode("<|endoftext|>") != [50256]  # typed text is never the special token


@needs_gpt2_bpe
def test_bpe_prepare_round_trip(tmp_path):
    root = make_repo(tmp_path, "shakespeare")
    raw = "\ufeff" + "First Citizen:\r\nBefore we proceed — any further, hear me speak. 日本語 🙂\r\n" * 40
    src = tmp_path / "play.txt"
    src.write_bytes(raw.encode("utf-8"))
    proc = run_prepare(root, "shakespeare", f"--input={src}")
    assert proc.returncode == 0, proc.stderr
    meta, ids = read_prepared(root / "data" / "shakespeare")
    assert (meta["tokenizer"], meta["encoding"], meta["vocab_size"], meta["dtype"]) == ("tiktoken", "gpt2", 50257, "uint16")
    assert meta["train_tokens"] == int(len(ids) * 0.9)
    tokenizer = Tokenizer.from_meta(meta)
    assert tokenizer.decode(ids) == clean_text(raw)
    assert tokenizer.decode(tokenizer.encode(clean_text(raw))) == clean_text(raw)


def test_bpe_prepare_without_tiktoken_files(tmp_path):
    root = make_repo(tmp_path, "don")
    src = tmp_path / "t.txt"
    src.write_text("hello\n")
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    dead = "http://127.0.0.1:9"  # a proxy that refuses at once, so tiktoken's download fails fast
    proc = run_prepare(root, "don", f"--input={src}", env_extra={
        "TIKTOKEN_CACHE_DIR": str(empty), "HTTPS_PROXY": dead, "HTTP_PROXY": dead, "https_proxy": dead,
        "http_proxy": dead, "NO_PROXY": "", "no_proxy": ""})
    message = one_line_error(proc)
    assert "tiktoken could not load the 'gpt2' files" in message and "TIKTOKEN_CACHE_DIR" in message


# ----------------------------------------------------------------------------------------------
# the real books (NANOGPT_TEST_DATA)


def test_real_don_quixote_char(tmp_path):
    root = make_repo(tmp_path, "don_char")
    shutil.copy(text_file("don_quixote.txt"), root / "data" / "don_char" / "input.txt")
    proc = run_prepare(root, "don_char")
    assert proc.returncode == 0, proc.stderr
    assert "gutenberg: kept the text between the START/END markers" in proc.stdout
    meta, ids = read_prepared(root / "data" / "don_char")
    assert meta["vocab_size"] <= 105 and "\r" not in meta["chars"] and "\ufeff" not in meta["chars"]
    text = Tokenizer.from_meta(meta).decode(ids)
    assert "Project Gutenberg" not in text[:2000] and "Project Gutenberg" not in text[-2000:]
    assert "In a village of La Mancha, the name of which I have no desire to call" in text[:200000]


def test_real_tiny_shakespeare_char(tmp_path):
    root = make_repo(tmp_path, "shakespeare_char")
    proc = run_prepare(root, "shakespeare_char", f"--input={text_file('tinyshakespeare.txt')}")
    assert proc.returncode == 0, proc.stderr
    meta, _ = read_prepared(root / "data" / "shakespeare_char")
    # the numbers nanoGPT's shakespeare_char/prepare.py prints for this file
    assert (meta["vocab_size"], meta["train_tokens"], meta["val_tokens"]) == (65, 1003854, 111540)


@needs_gpt2_bpe
def test_real_don_quixote_bpe(tmp_path):
    root = make_repo(tmp_path, "don")
    source = text_file("don_quixote.txt")
    shutil.copy(source, root / "data" / "don" / "input.txt")
    proc = run_prepare(root, "don")
    assert proc.returncode == 0, proc.stderr
    meta, ids = read_prepared(root / "data" / "don")
    assert (meta["vocab_size"], meta["dtype"], meta["encoding"]) == (50257, "uint16", "gpt2")
    with open(source, "rb") as f:
        expected = clean_text(f.read().decode("utf-8"))
    assert Tokenizer.from_meta(meta).decode(ids) == expected


# ----------------------------------------------------------------------------------------------
# openwebtext-style prepare on local files


DOCS = [f"Document {i}: {MULTIBYTE} " * (i + 1) + ("\n\nsecond paragraph" if i % 3 == 0 else "") for i in range(12)]


def check_owt_output(out_dir, gpt2):
    meta, ids = read_prepared(out_dir)
    assert (meta["tokenizer"], meta["encoding"], meta["vocab_size"], meta["dtype"]) == ("tiktoken", "gpt2", 50257, "uint16")
    assert len(ids) == sum(len(gpt2.encode(doc)) + 1 for doc in DOCS)
    # every document ends with EOT and the decoded documents are exactly the inputs, shuffled
    assert ids[-1] == gpt2.eot_token and meta["val_tokens"] > 0
    ends = np.flatnonzero(ids == gpt2.eot_token)
    starts = np.concatenate([[0], ends[:-1] + 1])
    assert sorted(gpt2.decode(ids[s:e]) for s, e in zip(starts, ends)) == sorted(DOCS)
    train_tokens = meta["train_tokens"]
    assert ids[train_tokens - 1] == gpt2.eot_token  # the split falls between documents


def test_openwebtext_prepare_jsonl(tmp_path, gpt2):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for part in range(3):
        with open(corpus / f"part{part}.jsonl", "w", encoding="utf-8") as f:
            for doc in DOCS[part * 4:(part + 1) * 4]:
                f.write(json.dumps({"id": part, "text": doc}) + "\n")
    root = make_repo(tmp_path, "openwebtext")
    out_dir = tmp_path / "owt"
    proc = run_prepare(root, "openwebtext", f"--files={corpus}/*.jsonl", f"--out_dir={out_dir}",
                       "--num_proc=2", "--val_fraction=0.25", "--write_chunk_docs=2")
    assert proc.returncode == 0, proc.stderr
    check_owt_output(out_dir, gpt2)
    assert load_meta(str(out_dir))["val_tokens"] > 0


def test_openwebtext_prepare_parquet_and_txt(tmp_path, gpt2):
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.table({"body": DOCS[:5]}), corpus / "a.parquet")
    pq.write_table(pa.table({"body": DOCS[5:]}), corpus / "b.parquet")
    root = make_repo(tmp_path, "openwebtext")
    proc = run_prepare(root, "openwebtext", f"--files={corpus}/*.parquet", "--text_column=body",
                       f"--out_dir={tmp_path / 'owt'}", "--num_proc=1", "--val_fraction=0.1")
    assert proc.returncode == 0, proc.stderr
    check_owt_output(tmp_path / "owt", gpt2)

    txt = tmp_path / "txt"
    txt.mkdir()
    for i, doc in enumerate(DOCS):  # .txt: one document per file, newlines inside kept
        (txt / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    proc = run_prepare(root, "openwebtext", f"--files={txt}/*.txt", f"--out_dir={tmp_path / 'owt_txt'}", "--num_proc=1")
    assert proc.returncode == 0, proc.stderr
    check_owt_output(tmp_path / "owt_txt", gpt2)

    message = one_line_error(run_prepare(root, "openwebtext", f"--files={tmp_path}/nothing/*.jsonl"))
    assert "matched no files" in message


def test_write_tokens_memmap_writes_in_chunks(tmp_path, monkeypatch):
    import datasets

    root = make_repo(tmp_path, "openwebtext")
    spec = importlib.util.spec_from_file_location("owt_prepare", root / "data" / "openwebtext" / "prepare.py")
    owt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(owt)

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 60000, size=rng.integers(1, 50)).tolist() for _ in range(7)]
    dataset = datasets.Dataset.from_dict({"ids": docs, "len": [len(d) for d in docs]})
    dataset = dataset.shuffle(seed=1)  # an indices mapping, as after train_test_split

    batches = []
    original_iter = datasets.Dataset.iter

    def counting_iter(self, batch_size, *args, **kwargs):
        for batch in original_iter(self, batch_size, *args, **kwargs):
            batches.append(batch.num_rows if hasattr(batch, "num_rows") else batch_size)
            yield batch

    monkeypatch.setattr(datasets.Dataset, "iter", counting_iter)
    path = str(tmp_path / "train.bin")
    count = owt.write_tokens_memmap(path, dataset, "uint16", chunk_docs=3)
    expected = np.concatenate([np.array(d) for d in dataset["ids"]])
    assert count == len(expected)
    np.testing.assert_array_equal(np.fromfile(path, dtype=np.uint16), expected)
    assert batches == [3, 3, 1]
    assert not os.path.exists(path + ".tmp")
