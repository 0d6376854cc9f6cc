"""
lines.py: line datasets, where each line of a text file is one sample (GPTBench's `charline`).

    python data/charline/prepare.py --input=lines.txt --dataset=mylines   # writes data/mylines/
    python data/add/prepare.py --digits=2                                 # 12+34=46 -> data/add/
    python data/roman/prepare.py                                          # 1994=MCMXCIV -> data/roman/

A line dataset is a prepared dataset (prepare.py) with a third split and one more key in
meta.json:
    train.bin, val.bin, test.bin   each split's lines, every line's tokens followed by the
                                   end-of-line token ('\\n'), one line after the other
    meta.json                      prepare.write_meta's keys, plus "lines" (see prepare_lines)
Its tokens are characters by default; --tokenizer=bytes, bpe or tiktoken work too (prepare.py).
Each line is encoded on its own and the end-of-line token appended, so no token ever holds the
end of a line together with the start of the next; a BPE is learned from the train lines alone.

Where the lines start is not stored: every line ends with the end-of-line token, so LineSplit
finds the starts in the .bin itself, and they can never disagree with it. (The .bin files are
also a plain character stream, so sample.py and nanoGPT read them as such.)

Training (train.py) takes one line per window: the window starts at the line's first token and
is padded on the right to block_size. Targets at the padding are -1, which model.forward
ignores; the pad inputs come after every real token, so a causal model never sees them. The
first token of a line is never a target (nothing comes before it): give it in the prompt.
loss_on='answer' also sets to -1 every target up to the answer separator, so only the answer
and its end-of-line are learned.

What it is not: the accuracy measure (metrics.py) or the training loop (train.py).
"""

import argparse
import os

import numpy as np

from smallgpt.dataloader import META_VERSION
from smallgpt.tokenizer import Tokenizer
from smallgpt.prepare import (_shown, check_tokenizer_arguments, dtype_for_vocab, insert_after,
                              learned_tokenizer, output_folder, read_utf8, tokenizer_arguments,
                              write_dataset)

SPLITS = ("train", "val", "test")
END_OF_LINE = "\n"


# ----------------------------------------------------------------------------------------------
# writing a line dataset


def read_lines(path):
    """[(line number in the file, 1-based, text)] of a UTF-8 file; a BOM is dropped and CRLF / CR
    end a line like LF does."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: --input file not found: {path}")
    return list(enumerate(read_utf8(path).split("\n"), start=1))


def split_sizes(n_lines, val_fraction, test_fraction):
    """(train, val, test) line counts: val and test get their fraction rounded, at least one line
    each when their fraction is above 0; train gets the rest and must keep at least one."""
    sizes = []
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        if not 0 <= fraction < 1:
            raise SystemExit(f"error: --{name}_fraction={fraction} must be in [0, 1)")
        sizes.append(max(round(n_lines * fraction), 1 if fraction > 0 else 0))
    n_train = n_lines - sum(sizes)
    if n_train < 1:
        raise SystemExit(f"error: {n_lines} lines are too few to split into train, val "
                         f"({sizes[0]}) and test ({sizes[1]}); give more lines or smaller fractions")
    return n_train, sizes[0], sizes[1]


def encode_lines(lines, chars):
    """The token ids of lines, each followed by the end-of-line token: one int64 array."""
    text = "".join(line + END_OF_LINE for line in lines)
    # code points through numpy, as prepare.prepare_char does: fast for a million lines
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    vocab = np.array([ord(c) for c in chars], dtype="<u4")
    return np.searchsorted(vocab, codepoints).astype(np.int64)


def prepare_lines(dataset_dir, numbered_lines, source, answer_separator=None, val_fraction=0.1,
                  test_fraction=0.1, shuffle=False, seed=1337, keep_repeats=False,
                  tokenizer_args=None):
    """Write a line dataset into dataset_dir from [(line number, text)].

    Empty lines are dropped, and so are repeats of a line already seen (unless keep_repeats):
    a line in train and again in test would be a test problem the model has seen. The lines are
    then shuffled (a seeded permutation) if asked, and cut in that order into train, val, test.
    tokenizer_args: the prepare script's --tokenizer, --vocab_size, --encoding (None: char).
    meta.json's "lines" holds: end_of_line, answer_separator (or null), the line count of each
    split, and the longest line in tokens (its characters, tokens, number in the source, text),
    which train.py names when a line does not fit block_size."""
    kind = tokenizer_args.tokenizer if tokenizer_args is not None else "char"
    kept, seen, empty, repeats = [], set(), 0, 0
    for number, line in numbered_lines:
        if not line:
            empty += 1
        elif line in seen and not keep_repeats:
            repeats += 1
        else:
            seen.add(line)
            kept.append((number, line))
    if empty or repeats:
        print(f"dropped {empty:,} empty line(s) and {repeats:,} repeated line(s)"
              + (" (--keep_repeats keeps them, but then a line can be in two splits)"
                 if repeats else ""))
    if answer_separator is not None:
        if not answer_separator or END_OF_LINE in answer_separator:
            raise SystemExit(f"error: answer separator {answer_separator!r}: give the text that "
                             f"ends each question, e.g. '=' (not empty, no end of line)")
        missing = next(((n, line) for n, line in kept if answer_separator not in line), None)
        if missing:
            raise SystemExit(f"error: line {missing[0]} of {source} has no answer separator "
                             f"{answer_separator!r}: {missing[1][:80]!r}; fix the line, or leave "
                             f"out --answer_separator")
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(kept))
        kept = [kept[i] for i in order]
    n_train, n_val, n_test = split_sizes(len(kept), val_fraction, test_fraction)
    parts = {"train": kept[:n_train], "val": kept[n_train:n_train + n_val],
             "test": kept[n_train + n_val:]}
    texts = {split: [line for _, line in part] for split, part in parts.items()}

    if kind == "char":
        chars = sorted(set("".join(line for _, line in kept)) | {END_OF_LINE})
        fields = {"tokenizer": "char", "vocab_size": len(chars), "chars": chars}
        ids = {split: encode_lines(lines, chars) for split, lines in texts.items()}
        tokens = {split: [len(line) for line in lines] for split, lines in texts.items()}
    else:
        # a BPE learns from the train lines only, each a sequence of its own (no merge spans
        # two lines, so none holds an end of line); the separator stays a token of its own
        tokenizer, fields = learned_tokenizer(tokenizer_args, texts["train"], answer_separator)
        eol = tokenizer.encode(END_OF_LINE)
        assert len(eol) == 1, f"the end of line is {len(eol)} tokens in {tokenizer.name}"
        encoded = {split: tokenizer.encode_batch(lines) for split, lines in texts.items()}
        ids = {split: np.array([i for line in lines for i in (*line, eol[0])], dtype=np.int64)
               for split, lines in encoded.items()}
        tokens = {split: [len(line) for line in lines] for split, lines in encoded.items()}
    dtype = dtype_for_vocab(fields["vocab_size"])
    # the longest line in tokens, what block_size must hold; its number in the source file
    split, index = max(((s, i) for s in SPLITS for i in range(len(tokens[s]))),
                       key=lambda item: tokens[item[0]][item[1]])
    number, longest = parts[split][index]
    n_tokens = tokens[split][index]
    meta = {"version": META_VERSION, **insert_after(fields, "vocab_size", {"dtype": dtype}),
            "source": source,
            "lines": {"end_of_line": END_OF_LINE, "answer_separator": answer_separator,
                      **{f"{split}_lines": len(parts[split]) for split in SPLITS},
                      "longest": {"characters": len(longest), "tokens": n_tokens, "line": number,
                                  "text": longest[:80]}}}
    written = write_dataset(dataset_dir, ids, meta)
    if kind == "char":
        print(f"vocab: {''.join(chars)!r} ({len(chars)} characters, the end of line included)")
    else:
        print(f"vocab: {fields['vocab_size']:,} tokens ({kind})")
    unit = "characters" if kind == "char" else "tokens"
    print(f"lines: train {n_train:,}, val {n_val:,}, test {n_test:,}; the longest has "
          f"{n_tokens} {unit} (line {number}): train with block_size >= {n_tokens}")
    print("wrote " + ", ".join(_shown(path) for path in written))
    return meta


def split_arguments(parser, shuffle_default):
    """The options every line-dataset prepare script has (split, shuffle, where to write)."""
    parser.add_argument("--dataset", default=None,
                        help="write data/NAME/ (or this folder, if it has a '/'); default: next to this script")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of the lines for val.bin")
    parser.add_argument("--test_fraction", type=float, default=0.1, help="share of the lines for test.bin")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the shuffle (and of a task's sample)")
    if shuffle_default:
        parser.add_argument("--no_shuffle", dest="shuffle", action="store_false",
                            help="split in the order generated instead of a seeded shuffle")
    else:
        parser.add_argument("--shuffle", action="store_true",
                            help="shuffle the lines (seeded) before splitting; default: file order")
    tokenizer_arguments(parser, "char")


def prepare_charline(dataset_dir, argv=None):
    """data/charline/prepare.py: a line dataset from any UTF-8 text file."""
    parser = argparse.ArgumentParser(description="prepare a line dataset (one sample per line): "
                                                 "train.bin, val.bin, test.bin and meta.json")
    parser.add_argument("--input", required=True, help="the UTF-8 text file, one sample per line")
    parser.add_argument("--answer_separator", default=None,
                        help="text that ends each line's question, e.g. '=' (for loss_on='answer' "
                             "and accuracy; train.py's answer_separator overrides it)")
    parser.add_argument("--keep_repeats", action="store_true",
                        help="keep lines that repeat an earlier line (they may land in two splits)")
    split_arguments(parser, shuffle_default=False)
    args = parser.parse_args(argv)
    check_tokenizer_arguments(args)
    folder = output_folder(args.dataset, os.path.dirname(dataset_dir)) if args.dataset else dataset_dir
    numbered = read_lines(args.input)
    if numbered and numbered[-1][1] == "":
        numbered.pop()  # the newline that ends the file does not start another line
    print(f"reading {_shown(args.input)}: {len(numbered):,} lines")
    return prepare_lines(folder, numbered, source=args.input, answer_separator=args.answer_separator,
                         val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                         shuffle=args.shuffle, seed=args.seed, keep_repeats=args.keep_repeats,
                         tokenizer_args=args)


def prepare_task(dataset_dir, lines, args, answer_separator, source):
    """A generated task (data/add, data/roman): every line is a distinct problem, so no problem
    is in two splits."""
    assert len(set(lines)) == len(lines), "a task generated the same problem twice"
    check_tokenizer_arguments(args)
    folder = output_folder(args.dataset, os.path.dirname(dataset_dir)) if args.dataset else dataset_dir
    return prepare_lines(folder, list(enumerate(lines, start=1)), source=source,
                         answer_separator=answer_separator, val_fraction=args.val_fraction,
                         test_fraction=args.test_fraction, shuffle=args.shuffle, seed=args.seed,
                         tokenizer_args=args)


# ----------------------------------------------------------------------------------------------
# reading a line dataset


def find_all(tokens, pattern):
    """Every position where the token sequence `pattern` starts in `tokens`, in order."""
    n = len(tokens) - len(pattern) + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    hit = np.ones(n, dtype=bool)
    for k, token in enumerate(pattern):
        hit &= tokens[k:k + n] == token
    return np.flatnonzero(hit)


class LineSplit:
    """The lines of one split's .bin: where each starts, how long it is, where its answer starts."""

    def __init__(self, bin_path, dtype, eol_id, name):
        self.name = name
        # a line dataset is small next to RAM (it is the point of one), so it is read in whole
        self.tokens = np.fromfile(bin_path, dtype=np.dtype(dtype))
        self.eol_id = eol_id
        ends = np.flatnonzero(self.tokens == eol_id)  # each line's end-of-line token
        if len(self.tokens) and (len(ends) == 0 or ends[-1] != len(self.tokens) - 1):
            raise ValueError(f"{bin_path} does not end with the end-of-line token: not a line "
                             f"dataset's file; re-create it with its prepare.py")
        self.starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64) if len(ends) else ends
        self.lengths = ends - self.starts  # tokens, the end of line not counted
        self.answer_starts = None  # per line, the offset of the answer's first token (set_answer)

    def __len__(self):
        return len(self.starts)

    def line_ids(self, i):
        """Token ids of line i, its end-of-line token included."""
        return self.tokens[self.starts[i]:self.starts[i] + self.lengths[i] + 1]

    def set_answer(self, separator_ids, tokenizer):
        """Find where each line's answer starts: right after the first `separator_ids`. A line
        without the separator is a ValueError that quotes it."""
        hits = find_all(self.tokens, separator_ids)
        first = np.searchsorted(hits, self.starts)  # the first hit at or after each line start
        found = first < len(hits)
        at = hits[np.minimum(first, len(hits) - 1)] if len(hits) else np.zeros_like(self.starts)
        found &= at + len(separator_ids) <= self.starts + self.lengths  # inside the line
        if not found.all():
            i = int(np.flatnonzero(~found)[0])
            raise ValueError(f"line {i + 1} of the {self.name} split has no answer separator "
                             f"{tokenizer.decode(separator_ids)!r}: "
                             f"{tokenizer.decode(self.line_ids(i)[:-1])[:80]!r}")
        self.answer_starts = at + len(separator_ids) - self.starts

    def batch(self, line_indices, block_size, answer_only=False):
        """x, y (B, block_size) int64: line i's tokens from the window's first position, padded
        with the end-of-line token; its next tokens as targets, -1 at the padding (and before
        the answer when answer_only)."""
        x = np.full((len(line_indices), block_size), self.eol_id, dtype=np.int64)
        y = np.full((len(line_indices), block_size), -1, dtype=np.int64)
        for row, i in enumerate(line_indices):
            ids, n = self.line_ids(i), self.lengths[i]
            assert n <= block_size, f"line {i + 1} has {n} tokens, block_size is {block_size}"
            x[row, :n] = ids[:-1]
            y[row, :n] = ids[1:]  # the last target is the end of line
            if answer_only:
                y[row, :self.answer_starts[i] - 1] = -1  # y[j] is token j + 1
        return x, y


class LineDataset:
    """A prepared line dataset: its tokenizer, its splits, the answer separator."""

    def __init__(self, data_dir, meta, splits=SPLITS):
        self.data_dir, self.meta = data_dir, meta
        self.info = meta["lines"]
        self.tokenizer = Tokenizer.from_meta(meta)
        self.unit = "characters" if meta["tokenizer"] == "char" else "tokens"  # in messages
        self.eol_id = self.tokenizer.encode(self.info["end_of_line"])[0]
        self.separator = self.info.get("answer_separator") or ""
        self.answer_only = False
        self.splits = {}
        for split in splits:
            path = os.path.join(data_dir, f"{split}.bin")
            if not os.path.isfile(path):
                raise ValueError(f"line dataset {data_dir} has no {split}.bin; re-create it with "
                                 f"its prepare.py")
            self.splits[split] = LineSplit(path, meta["dtype"], self.eol_id, split)
            if not len(self.splits[split]):
                raise ValueError(f"the {split} split of {data_dir} has no lines; prepare it again "
                                 f"with a {split}_fraction above 0 (and enough lines)")

    def __getitem__(self, split):
        return self.splits[split]

    def check_block_size(self, block_size):
        """ValueError naming the longest line when a line does not fit a window of block_size."""
        too_long = sum(int((s.lengths > block_size).sum()) for s in self.splits.values())
        if not too_long:
            return
        longest = self.info["longest"]
        n_tokens = longest.get("tokens", longest["characters"])  # written before bpe: characters
        source = _shown(self.meta["source"]) if os.path.isfile(str(self.meta.get("source"))) \
            else self.meta.get("source") or "the input"
        raise ValueError(f"{too_long} line(s) longer than block_size={block_size}: the longest is "
                         f"line {longest['line']} of {source} ({n_tokens} {self.unit}: "
                         f"{longest['text']!r}); use --block_size={n_tokens} or shorten it")

    def set_targets(self, loss_on, separator=""):
        """loss_on 'all' or 'answer'; separator '' = the dataset's own. ValueError when the
        answers can't be found."""
        if loss_on not in ("all", "answer"):
            raise ValueError(f"loss_on={loss_on!r}: use 'all' or 'answer'")
        self.separator = separator or self.separator
        self.answer_only = loss_on == "answer"
        if self.separator:
            if END_OF_LINE in self.separator:
                raise ValueError(f"answer_separator={self.separator!r} can't contain the end of line")
            try:
                separator_ids = self.tokenizer.encode(self.separator)
            except ValueError:
                raise ValueError(f"answer_separator={self.separator!r} has characters the dataset "
                                 f"does not use; pass one that is in its lines, e.g. '='") from None
            for split in self.splits.values():
                split.set_answer(separator_ids, self.tokenizer)
        elif self.answer_only:
            raise ValueError("loss_on='answer' needs an answer separator: pass --answer_separator "
                             "(e.g. '='), or prepare the dataset with one")

    def batch(self, split, batch_size, block_size, generator=None, line_indices=None):
        """batch_size random lines of a split (or these line_indices): x, y (B, T) int64 tensors."""
        import torch  # only the training side needs torch

        if line_indices is None:
            line_indices = torch.randint(len(self.splits[split]), (batch_size,),
                                         generator=generator).tolist()
        x, y = self.splits[split].batch(line_indices, block_size, self.answer_only)
        return torch.from_numpy(x), torch.from_numpy(y)

    def eval_lines(self, split, n_windows):
        """n_windows line indices spread evenly over a split, the same at every evaluation."""
        return np.linspace(0, len(self.splits[split]) - 1, n_windows).astype(np.int64).tolist()

    def lines(self, split, count=None):
        """The text of the first `count` lines of a split (all when None), without end of line."""
        s = self.splits[split]
        n = len(s) if count is None else min(count, len(s))
        return [self.tokenizer.decode(s.line_ids(i)[:-1]) for i in range(n)]


def is_line_dataset(meta):
    return bool(meta) and isinstance(meta.get("lines"), dict)
