"""
Tokenizers of a dataset's own (issue 25): a byte-level BPE learned from the train split with
Hugging Face's `tokenizers`, raw bytes, and both through prepare -> train -> sample -> eval ->
export -> transformers' pipeline; plus the one-line errors.

    OMP_NUM_THREADS=1 python -m pytest tests/test_tokenizers.py -q      # about 60 s on 2 cores

The references are independent of the code under test: the `tokenizers` library's own decoder
and byte alphabet, Python's UTF-8 codec, byte counts worked out from the text, and the greedy
text of transformers' pipeline on the exported folder.
"""

import contextlib
import io
import json
import os
import random
import runpy
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import REPO, TINY, make_text, run_script  # noqa: E402

tokenizers = pytest.importorskip("tokenizers")

from smallgpt.checkpoint import load_checkpoint  # noqa: E402  (conftest put the repo on sys.path)
from smallgpt.dataloader import load_meta  # noqa: E402
from smallgpt.lines import LineDataset  # noqa: E402
from smallgpt.tokenizer import (BYTE_TO_CHAR, EOT_TEXT, StreamDecoder, Tokenizer,  # noqa: E402
                                encode_prompt, json_sha256, train_bpe)

MULTIBYTE = "Señor Quixote paid 12 € at the café 🙂 日本語 naïve e\u0301\n"  # 2, 3, 4-byte characters


def book(n_chars=30_000):
    """make_text's words with a multi-byte line every tenth line."""
    lines = make_text(n_chars).splitlines(keepends=True)
    return "".join(line + (MULTIBYTE if i % 10 == 0 else "") for i, line in enumerate(lines))


def run_here(script, *args, cwd):
    """`python SCRIPT ARGS` run in this process (runpy: no second torch import), from cwd:
    (returncode, stdout, stderr)."""
    argv, here = sys.argv, os.getcwd()
    sys.argv = [str(REPO / script), *map(str, args)]
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(REPO / script), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv, _ = argv, os.chdir(here)
    return code, out.getvalue(), err.getvalue()


def one_line_error(proc):
    """The single stderr line of a failed script (configurator's 'Overriding' echo aside)."""
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("Overriding")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def prepare(tmp_path, name, *args, text=None, script="data/don_char/prepare.py"):
    """Run a prepare script on `text` (book() by default), writing tmp_path/name."""
    source = tmp_path / f"{name}.txt"
    source.write_text(text if text is not None else book(), encoding="utf-8")
    return run_script(script, f"--input={source}", f"--dataset={tmp_path / name}", *args,
                      cwd=tmp_path)


@pytest.fixture(scope="module")
def bpe_dataset(tmp_path_factory):
    """data/don_char/prepare.py --tokenizer=bpe --vocab_size=400 on book(): (folder, text)."""
    root = tmp_path_factory.mktemp("bpe")
    proc = prepare(root, "own", "--tokenizer=bpe", "--vocab_size=400")
    assert proc.returncode == 0, proc.stderr
    return root / "own", book()


# ---------------------------------------------------------------------------------------------
# the tokenizers themselves


def test_byte_alphabet_is_the_one_tokenizers_uses():
    # tokenizers' own list of the 256 characters, and its pre-tokenizer on every byte that can
    # stand alone in UTF-8 (0-127) and every 2-byte character (covers the bytes 0x80-0xDF)
    assert sorted(BYTE_TO_CHAR.values()) == sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for text in [chr(b) for b in range(128)] + [chr(c) for c in range(0x80, 0x800, 7)]:
        [(piece, _)] = level.pre_tokenize_str(text)
        assert piece == "".join(BYTE_TO_CHAR[b] for b in text.encode("utf-8")), repr(text)


def test_bpe_round_trip_and_decoding_match_tokenizers():
    text = book(20_000)
    bpe_json = train_bpe([text], 400)
    ours = Tokenizer("bpe", bpe_json=bpe_json)
    reference = tokenizers.Tokenizer.from_str(bpe_json)
    assert ours.vocab_size == 400 and ours.eot_token == 0 and ours.name == "bpe-400"
    ids = ours.encode(text)
    assert ours.decode(ids) == text and len(ids) < len(text.encode("utf-8")) / 2  # it compresses
    for sample in (MULTIBYTE, "🙂🙂 x", "\n\n  tabs\tand  spaces  ", "ǅ Ω ℵ 𝔘"):
        assert ours.decode(ours.encode(sample)) == sample
    # any ids, valid UTF-8 or not, decode as the library decodes them (special tokens kept)
    rng = random.Random(0)
    for _ in range(200):
        some = [rng.randrange(ours.vocab_size) for _ in range(rng.randint(1, 12))]
        assert ours.decode(some) == reference.decode(some, skip_special_tokens=False)
    # typed "<|endoftext|>" is text; encode_prompt makes it the token, as with GPT-2
    assert EOT_TEXT not in ours.encode(f"a{EOT_TEXT}b") and ours.decode(ours.encode(EOT_TEXT)) == EOT_TEXT
    assert encode_prompt(ours, f"a{EOT_TEXT}b") == ours.encode("a") + [0] + ours.encode("b")


def test_bpe_training_is_deterministic_and_small_texts_stop_early():
    assert train_bpe(["abc abd abe " * 50], 300) == train_bpe(["abc abd abe " * 50], 300)
    small = Tokenizer("bpe", bpe_json=train_bpe(["abab abab"], 5000))
    assert 257 < small.vocab_size < 270  # a few merges, then no pair occurs twice
    with pytest.raises(ValueError, match="needs 257 tokens"):
        train_bpe(["text"], 256)


def test_stream_decoder_never_splits_a_character():
    for tokenizer in (Tokenizer("bytes", 256), Tokenizer("bpe", bpe_json=train_bpe([book(5000)], 300))):
        decoder, pieces = StreamDecoder(tokenizer), []
        for i in tokenizer.encode(MULTIBYTE * 3):
            pieces.append(decoder.push([i]))
        pieces.append(decoder.flush())
        assert "".join(pieces) == MULTIBYTE * 3 and not any("\ufffd" in p for p in pieces)


def test_bytes_tokenizer_is_utf8():
    tokenizer = Tokenizer.from_meta({"tokenizer": "bytes", "vocab_size": 256})
    assert tokenizer.encode("é🙂") == [0xC3, 0xA9, 0xF0, 0x9F, 0x99, 0x82]  # by hand from the UTF-8 tables
    assert tokenizer.decode([0xC3, 0xA9]) == "é" and tokenizer.decode([0xC3]) == "\ufffd"


@pytest.mark.parametrize("kind", ["char", "bytes", "bpe"])
def test_tokenizer_json_for_hugging_face_gives_our_ids(kind):
    text = book(8000)
    tokenizer = {"char": lambda: Tokenizer("char", len(set(text)), chars=sorted(set(text))),
                 "bytes": lambda: Tokenizer("bytes", 256),
                 "bpe": lambda: Tokenizer("bpe", bpe_json=train_bpe([text], 400))}[kind]()
    hf = tokenizers.Tokenizer.from_str(tokenizer.to_hf().to_str())  # as written to disk
    ids = tokenizer.encode(text)
    assert hf.encode(text).ids == ids and hf.decode(ids) == text


# ---------------------------------------------------------------------------------------------
# prepare: the files, the split, the errors


def test_prepare_bpe_learns_from_the_train_split_only(tmp_path):
    # a word that only the val text holds, 300 times: a BPE that saw val would make it a token
    text = book(20_000)
    text += "zyzzyva " * 300
    proc = prepare(tmp_path, "own", "--tokenizer=bpe", "--vocab_size=400", text=text)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "own"
    assert sorted(os.listdir(folder)) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    meta = load_meta(str(folder))
    assert (meta["tokenizer"], meta["vocab_size"], meta["dtype"]) == ("bpe", 400, "uint16")
    assert meta["tokenizer_sha256"] == json_sha256((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_meta(meta)
    assert not any(b"zz" in tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size))
    train = np.fromfile(folder / "train.bin", dtype=np.uint16)
    val = np.fromfile(folder / "val.bin", dtype=np.uint16)
    cut = int(len(text) * 0.9)  # 90% of the characters
    assert tokenizer.decode(train) == text[:cut] and tokenizer.decode(val) == text[cut:]


def test_a_bpe_past_65535_tokens_is_stored_as_uint32(tmp_path):
    # 60,000 random 5-letter words, twice: enough distinct pairs seen twice for 66,000 tokens
    rng = random.Random(0)
    words = sorted({"".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
                    for _ in range(60_000)})
    text = " ".join(words * 2)
    proc = prepare(tmp_path, "big", "--tokenizer=bpe", "--vocab_size=66000", text=text)
    assert proc.returncode == 0, proc.stderr
    meta = load_meta(str(tmp_path / "big"))
    assert meta["vocab_size"] == 66000 and meta["dtype"] == "uint32"
    train = np.fromfile(tmp_path / "big" / "train.bin", dtype=np.uint32)
    assert train.max() > 65535 and len(train) == meta["train_tokens"]
    assert Tokenizer.from_meta(meta).decode(train) == text[:int(len(text) * 0.9)]


def test_prepare_bytes_and_char_cut_at_the_same_character(tmp_path):
    text = book(10_000)
    cut = int(len(text) * 0.9)
    assert prepare(tmp_path, "b", "--tokenizer=bytes", text=text).returncode == 0
    assert prepare(tmp_path, "c", text=text).returncode == 0
    val_bytes = np.fromfile(tmp_path / "b" / "val.bin", dtype=np.uint16)
    assert bytes(val_bytes.astype(np.uint8)) == text[cut:].encode("utf-8")
    assert len(np.fromfile(tmp_path / "c" / "val.bin", dtype=np.uint16)) == len(text) - cut
    assert load_meta(str(tmp_path / "b"))["vocab_size"] == 256


@pytest.mark.parametrize("args, expected", [
    (["--tokenizer=wordpiece"], "error: --tokenizer=wordpiece: use one of char, bytes, bpe, tiktoken"),
    (["--tokenizer=bpe", "--vocab_size=256"], "error: --vocab_size=256 is below the 257 tokens"),
    (["--tokenizer=bpe"], "error: --tokenizer=bpe needs --vocab_size=N"),
    (["--vocab_size=500"], "error: --vocab_size is for --tokenizer=bpe"),
])
def test_bad_tokenizer_arguments_write_nothing(tmp_path, args, expected):
    message = one_line_error(prepare(tmp_path, "out", *args))
    assert message.startswith(expected), message
    assert not (tmp_path / "out").exists()


def test_missing_or_foreign_tokenizer_json_is_one_line(tmp_path, bpe_dataset):
    folder = tmp_path / "copy"
    shutil.copytree(bpe_dataset[0], folder)
    good = (folder / "tokenizer.json").read_text(encoding="utf-8")
    args = [f"--dataset={folder}", f"--out_dir={tmp_path / 'out'}", *TINY, "--max_iters=1"]

    (folder / "tokenizer.json").unlink()
    message = one_line_error(run_script("train.py", *args, cwd=tmp_path))
    assert "tokenizer.json is missing" in message and "--tokenizer=bpe" in message

    other = train_bpe([book(5000)], 400)  # another BPE of the same size
    (folder / "tokenizer.json").write_text(other, encoding="utf-8")
    message = one_line_error(run_script("train.py", *args, cwd=tmp_path))
    assert "does not match meta.json" in message

    (folder / "tokenizer.json").write_text(good, encoding="utf-8")
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    meta["vocab_size"] = 512
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    message = one_line_error(run_script("train.py", *args, cwd=tmp_path))
    assert "vocab_size=512" in message and "400" in message
    assert not (tmp_path / "out").exists()


def test_line_dataset_with_its_own_bpe(tmp_path):
    proc = run_script("data/add/prepare.py", "--digits=2", "--tokenizer=bpe", "--vocab_size=300",
                      f"--dataset={tmp_path / 'add'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    meta = load_meta(str(tmp_path / "add"))
    data = LineDataset(str(tmp_path / "add"), meta)
    tokenizer = data.tokenizer
    assert data.eol_id == tokenizer.encode("\n")[0] and tokenizer.decode([data.eol_id]) == "\n"
    # every line is there once, in some split, and "=" is always a token of its own
    lines = [line for split in ("train", "val", "test") for line in data.lines(split)]
    assert sorted(lines) == sorted(f"{a}+{b}={a + b}" for a in range(100) for b in range(100))
    assert tokenizer.encode("12+34=") == tokenizer.encode("12+34") + tokenizer.encode("=")
    data.set_targets("answer")  # finds the separator in every line
    assert meta["lines"]["longest"]["tokens"] == max(len(tokenizer.encode(line)) for line in lines)


# ---------------------------------------------------------------------------------------------
# train -> sample -> eval -> export -> transformers


def test_bpe_model_from_training_to_transformers_pipeline(tmp_path, bpe_dataset):
    transformers = pytest.importorskip("transformers")
    folder, text = bpe_dataset
    out = tmp_path / "out"
    proc = run_script("train.py", f"--dataset={folder}", f"--out_dir={out}", *TINY,
                      "--block_size=64", "--max_iters=40", "--eval_interval=40", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    # the checkpoint carries the tokenizer (plain str, weights_only=True loads it), so nothing
    # below needs the data folder: move it away
    checkpoint = load_checkpoint(str(out / "ckpt.pt"))
    assert checkpoint["meta"]["tokenizer_json"] == (folder / "tokenizer.json").read_text(encoding="utf-8")
    assert checkpoint["model_args"]["vocab_size"] == 400
    hidden = tmp_path / "hidden"
    shutil.move(str(folder), hidden)
    try:
        prompt = "Sancho paid 12 € 🙂"
        code, sampled, err = run_here("sample.py", f"--out_dir={out}", f"--start={prompt}",
                                      "--num_samples=1", "--max_new_tokens=24", "--temperature=0",
                                      cwd=tmp_path)
        assert code == 0, err
        assert sampled.startswith(prompt) and "\ufffd" not in sampled
        import workbench  # the Python API: the same model, tokenizer and greedy text
        assert workbench.load(str(out)).generate(prompt, max_new_tokens=24, temperature=0) == \
            sampled[len(prompt):].removesuffix("\n")

        # bits per byte over a text: the bytes counted are the text's UTF-8 bytes less those
        # of the first token, which nothing predicts (worked out here from the text itself)
        sample_text = tmp_path / "t.txt"
        sample_text.write_text(MULTIBYTE * 20, encoding="utf-8")
        code, report, err = run_here("eval.py", f"--out_dir={out}", f"--text={sample_text}",
                                     "--json=True", cwd=tmp_path)
        assert code == 0, err
        result = json.loads(report)
        first = Tokenizer.from_meta(checkpoint["meta"]).encode(MULTIBYTE)[0]
        first_bytes = len(Tokenizer.from_meta(checkpoint["meta"]).decode_bytes([first]))
        assert result["bytes"] == len((MULTIBYTE * 20).encode("utf-8")) - first_bytes

        hf_dir = tmp_path / "hf"
        code, log, err = run_here("export.py", f"--out_dir={out}", f"--hf_dir={hf_dir}", cwd=tmp_path)
        assert code == 0, err
        assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(hf_dir))
    finally:
        shutil.move(str(hidden), folder)

    generator = transformers.pipeline("text-generation", model=str(hf_dir), device="cpu")
    generated = generator(prompt, max_new_tokens=24, do_sample=False)[0]["generated_text"]
    assert generated == sampled.removesuffix("\n")
    # and the eval of the data split runs from the checkpoint (same vocabulary check passes)
    code, report, err = run_here("eval.py", f"--out_dir={out}", "--json=True", "--max_windows=4",
                                 cwd=tmp_path)
    assert code == 0, err


def test_char_model_exports_a_tokenizer_json_too(tmp_path, trained_run):
    transformers = pytest.importorskip("transformers")
    out, _ = trained_run
    hf_dir = tmp_path / "hf"
    code, _, err = run_here("export.py", f"--out_dir={out}", f"--hf_dir={hf_dir}", cwd=tmp_path)
    assert code == 0, err
    prompt = "The knight"
    code, sampled, err = run_here("sample.py", f"--out_dir={out}", f"--start={prompt}",
                                  "--num_samples=1", "--max_new_tokens=20", "--temperature=0",
                                  cwd=tmp_path)
    assert code == 0, err
    generator = transformers.pipeline("text-generation", model=str(hf_dir), device="cpu")
    assert generator(prompt, max_new_tokens=20, do_sample=False)[0]["generated_text"] == \
        sampled.removesuffix("\n")
    # the folder carries the vocabulary (smallgpt_meta.json): sample.py and eval.py read it as
    # they read the checkpoint, and give the checkpoint's text and loss
    code, from_hf, err = run_here("sample.py", f"--init_from={hf_dir}", f"--start={prompt}",
                                  "--num_samples=1", "--max_new_tokens=20", "--temperature=0",
                                  "--dtype=float32", cwd=tmp_path)
    assert code == 0, err
    assert from_hf == sampled
    text = tmp_path / "text.txt"
    text.write_text("The knight rode out of the village at dawn.\n" * 4, encoding="utf-8")
    scores = []
    for source in (f"--out_dir={out}", f"--init_from={hf_dir}"):
        code, report, err = run_here("eval.py", source, f"--text={text}", "--json=True",
                                     "--dtype=float32", cwd=tmp_path)
        assert code == 0, err
        scores.append(json.loads(report)["loss"])
    assert scores[1] == pytest.approx(scores[0], abs=1e-4)
    # without it the folder is read as GPT-2's vocabulary, which the model can't hold: one line
    (hf_dir / "smallgpt_meta.json").unlink()
    code, _, err = run_here("eval.py", f"--init_from={hf_dir}", f"--text={text}", cwd=tmp_path)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    # a prompt the character vocabulary can't encode: one line from sample.py
    code, _, err = run_here("sample.py", f"--out_dir={out}", "--start=Zürich ¿", "--num_samples=1",
                            cwd=tmp_path)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "not in the vocabulary" in lines[0], err
