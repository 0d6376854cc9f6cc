"""
Tokens <-> text. Four kinds, named by meta.json's "tokenizer":
    char      the dataset's own characters (meta["chars"]), one token each
    bytes     the 256 byte values of UTF-8, one token each: nothing is unknown, nothing learned
    bpe       a byte-level BPE trained on the dataset's train split (train_bpe, Hugging Face's
              `tokenizers`), kept in the dataset's tokenizer.json
    tiktoken  a published BPE through tiktoken, GPT-2's by default
Also prompt encoding, and streamed decoding that never prints half a UTF-8 character.
"""

import codecs
import hashlib

KINDS = ("char", "bytes", "bpe", "tiktoken")
EOT_TEXT = "<|endoftext|>"


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


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise RuntimeError("a BPE of the dataset's own needs Hugging Face tokenizers; run: "
                           "pip install tokenizers") from None
    return tokenizers


# ----------------------------------------------------------------------------------------------
# byte-level BPE (train_bpe): GPT-2's scheme, trained on our text


def _byte_to_char():
    """GPT-2's byte -> character table, which byte-level BPE vocabularies are written in: a
    printable byte stands for itself, the others (control bytes, space, 127-160, 173) for the
    characters from U+0100 on, in byte order, so every token is a printable JSON string."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = _byte_to_char()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
BPE_MIN_VOCAB = 256 + 1  # every byte, and <|endoftext|>


def check_vocab_fits(tokenizer, vocab_size):
    """ValueError when the tokenizer makes ids the model has no rows for: its vocabulary is
    another one (a model may have more rows: GPT-2's 50257 tokens in 50304)."""
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"{vocab_size}: the model was trained on another vocabulary")


def json_sha256(text: str) -> str:
    """The fingerprint meta.json keeps of its tokenizer.json (and checks on every load)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _byte_level(model):
    """A tokenizers.Tokenizer around `model` that sees text as UTF-8 bytes: GPT-2's pre-split
    (words, numbers, punctuation, spaces; no merge ever crosses two of them), no normalizer, no
    prefix space, so decode(encode(text)) == text for any text."""
    tokenizers = _tokenizers()
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                  use_regex=True)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    return tokenizer


def train_bpe(texts, vocab_size: int, separator: str | None = None) -> str:
    """A byte-level BPE of at most vocab_size tokens learned from `texts` (a list of strings; each
    is one sequence, no merge spans two), as tokenizer.json text. Ids: 0 is <|endoftext|>, 1-256
    the bytes, then the merges in the order learned. A small text may run out of pairs seen at
    least twice before vocab_size: the vocabulary is then smaller (get it from the result).
    `separator` (a line dataset's answer separator) becomes a token of its own that no merge
    crosses, so a prompt that ends with it splits there, as the training lines did."""
    if vocab_size < BPE_MIN_VOCAB:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE: it needs "
                         f"{BPE_MIN_VOCAB} tokens (256 bytes + {EOT_TEXT}) before any merge; use "
                         f"{BPE_MIN_VOCAB} or more (e.g. 2048)")
    tokenizers = _tokenizers()
    tokenizer = _byte_level(tokenizers.models.BPE())
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT_TEXT], min_frequency=2, show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())  # all 256 bytes, seen or not
    if separator:  # learn no merges across the separator: it will always stand alone
        texts = [piece for text in texts for piece in text.split(separator)]
    tokenizer.train_from_iterator(texts, trainer)
    if separator:
        # one token (a new id unless it is a single byte); normalized=False: matched as written
        tokenizer.add_tokens([tokenizers.AddedToken(separator, normalized=False)])
    return tokenizer.to_str()


def _token_bytes(hf_tokenizer):
    """[bytes of token id i]: a byte-level token's characters mapped back through CHAR_TO_BYTE;
    an added token (<|endoftext|>, a separator) is its own text in UTF-8, as tokenizers decodes it."""
    added = {i: t.content for i, t in hf_tokenizer.get_added_tokens_decoder().items()}
    table = [b""] * hf_tokenizer.get_vocab_size()
    for token, i in hf_tokenizer.get_vocab(with_added_tokens=False).items():
        table[i] = bytes(CHAR_TO_BYTE[c] for c in token)
    for i, content in added.items():
        table[i] = content.encode("utf-8")
    return table


# ----------------------------------------------------------------------------------------------
# two vocabularies compared


GPT2_META = {"tokenizer": "tiktoken", "encoding": "gpt2", "vocab_size": 50257}  # no meta: nanoGPT's


def describe_vocabulary(meta) -> str:
    """A meta's tokenizer in a few words: 'char, 65 characters', 'tiktoken gpt2'."""
    meta = meta or GPT2_META
    kind = meta.get("tokenizer")
    if kind == "char":
        return f"char, {len(meta['chars'])} characters"
    if kind == "tiktoken":
        return f"tiktoken {meta.get('encoding')}"
    if kind == "bpe":
        return f"bpe, {meta.get('vocab_size')} tokens"
    return str(kind)


def vocabulary_difference(meta, other, names=("the first", "the second")) -> str | None:
    """None when two metas (a dataset's meta.json, a checkpoint's "meta"; None = GPT-2 BPE) give
    every token id the same meaning, else the difference in a few words, calling them `names`.
    Reads only the metas: no tokenizer is loaded, so it works without tiktoken or the
    tokenizers library."""
    meta, other = meta or GPT2_META, other or GPT2_META
    same_kind = (meta.get("tokenizer"), meta.get("encoding")) == (other.get("tokenizer"), other.get("encoding"))
    if not same_kind:
        return f"{describe_vocabulary(meta)} vs {describe_vocabulary(other)}"
    if meta["tokenizer"] == "char" and meta["chars"] != other["chars"]:
        gone = "".join(c for c in meta["chars"] if c not in set(other["chars"]))[:12]
        new = "".join(c for c in other["chars"] if c not in set(meta["chars"]))[:12]
        change = ", ".join(part for part in (f"{gone!r} only in {names[0]}" if gone else "",
                                             f"{new!r} only in {names[1]}" if new else "") if part)
        return (f"{len(meta['chars'])} vs {len(other['chars'])} characters" +
                (f": {change}" if change else ", in another order"))
    if meta["tokenizer"] == "bpe" and meta.get("tokenizer_sha256") != other.get("tokenizer_sha256"):
        return (f"two different BPE tokenizers ({meta.get('vocab_size')} and "
                f"{other.get('vocab_size')} tokens; tokenizer.json sha256 "
                f"{str(meta.get('tokenizer_sha256'))[:12]} vs {str(other.get('tokenizer_sha256'))[:12]})")
    if meta.get("vocab_size") != other.get("vocab_size"):
        return f"{meta.get('vocab_size')} vs {other.get('vocab_size')} tokens"
    return None


# ----------------------------------------------------------------------------------------------
# the tokenizer


class Tokenizer:
    """Text <-> token ids for one of KINDS (see the module docstring)."""

    def __init__(self, kind, vocab_size=None, chars=None, encoding=None, bpe_json=None):
        assert kind in KINDS, kind
        self.kind = kind
        self.chars = chars  # char: token id i is chars[i]
        self.encoding = encoding  # tiktoken: the tiktoken.Encoding
        self.bpe_json = bpe_json  # bpe: tokenizer.json's text
        self.vocab_size = vocab_size
        self.eot_token = encoding.eot_token if encoding is not None else None
        self.name = encoding.name if encoding is not None else kind
        self._stoi = {c: i for i, c in enumerate(chars)} if chars is not None else None
        if kind == "bpe":
            self._bpe = _tokenizers().Tokenizer.from_str(bpe_json)
            # "<|endoftext|>" typed in a text is text, as with tiktoken's encode_ordinary;
            # encode_prompt turns it into the token where a prompt asks for it
            self._bpe.encode_special_tokens = True
            self._token_bytes = _token_bytes(self._bpe)
            self.eot_token = self._bpe.token_to_id(EOT_TEXT)
            self.vocab_size = self._bpe.get_vocab_size()
            self.name = f"bpe-{self.vocab_size}"

    @classmethod
    def from_meta(cls, meta: dict | None) -> "Tokenizer":
        """The tokenizer a dataset was prepared with; no meta means GPT-2 BPE, as in nanoGPT. A bpe
        meta carries tokenizer.json's text in "tokenizer_json" (load_meta reads it into the dict,
        and a checkpoint saves that dict)."""
        if meta is None:
            return cls.tiktoken("gpt2")
        kind = meta["tokenizer"]
        if kind == "char":
            return cls("char", len(meta["chars"]), chars=list(meta["chars"]))
        if kind == "bytes":
            return cls("bytes", 256)
        if kind == "bpe":
            return cls.bpe(meta)
        tokenizer = cls.tiktoken(meta["encoding"])
        if tokenizer.vocab_size != meta["vocab_size"]:
            raise ValueError(f"meta says vocab_size={meta['vocab_size']} but tiktoken {meta['encoding']!r} "
                             f"has {tokenizer.vocab_size}; re-run the dataset's prepare.py")
        return tokenizer

    @classmethod
    def tiktoken(cls, name="gpt2") -> "Tokenizer":
        encoding = _load_tiktoken(name)
        return cls("tiktoken", encoding.n_vocab, encoding=encoding)

    @classmethod
    def bpe(cls, meta) -> "Tokenizer":
        """A bpe meta's tokenizer, checked against what meta.json recorded when it was written."""
        fix = "re-run the dataset's prepare.py"
        text = meta.get("tokenizer_json")
        if not isinstance(text, str):
            raise ValueError(f"this meta names a BPE tokenizer but holds no tokenizer.json text "
                             f"(read a dataset's meta with dataloader.load_meta); {fix}")
        if json_sha256(text) != meta.get("tokenizer_sha256"):
            raise ValueError(f"tokenizer.json does not match meta.json (another sha256): it is not "
                             f"the tokenizer the .bin files were written with; {fix}")
        try:
            tokenizer = cls("bpe", bpe_json=text)
        except Exception as e:  # tokenizers' own parse error: a damaged file
            raise ValueError(f"tokenizer.json is not a tokenizers file ({str(e)[:120]}); {fix}") from None
        if tokenizer.vocab_size != meta["vocab_size"]:
            raise ValueError(f"meta.json says vocab_size={meta['vocab_size']} but tokenizer.json has "
                             f"{tokenizer.vocab_size} tokens; {fix}")
        return tokenizer

    def encode(self, text: str) -> list[int]:
        if self.kind == "tiktoken":
            # encode_ordinary: "<|endoftext|>" typed in a prompt is text, not the special token.
            return self.encoding.encode_ordinary(text)
        if self.kind == "bpe":
            return self._bpe.encode(text, add_special_tokens=False).ids
        if self.kind == "bytes":
            return list(text.encode("utf-8"))
        unknown = list(dict.fromkeys(c for c in text if c not in self._stoi))
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:20]) + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
            raise ValueError(f"prompt has characters not in the vocabulary: {shown} "
                             f"(the model knows {self.vocab_size} characters)")
        return [self._stoi[c] for c in text]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode of each text; a BPE encodes them in parallel."""
        if self.kind == "bpe":
            return [e.ids for e in self._bpe.encode_batch(texts, add_special_tokens=False)]
        return [self.encode(text) for text in texts]

    def decode(self, ids) -> str:
        ids = _as_int_list(ids)
        if self.kind == "char":
            return "".join(self.chars[i] for i in ids)
        if self.kind == "tiktoken":
            return self.encoding.decode(ids)  # a lone half of a multi-byte char becomes U+FFFD
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids) -> bytes:
        ids = _as_int_list(ids)
        if self.kind == "tiktoken":
            return self.encoding.decode_bytes(ids)
        if self.kind == "bpe":
            return b"".join(self._token_bytes[i] for i in ids)
        if self.kind == "bytes":
            return bytes(ids)
        return self.decode(ids).encode("utf-8")

    def to_hf(self):
        """This vocabulary as a Hugging Face tokenizers.Tokenizer (what export.py writes as
        tokenizer.json), or None for tiktoken (export.py ships GPT-2's own files instead).
        char and bytes become a BPE without merges: a char vocabulary splits text into its
        characters (one it lacks is dropped: a tokenizer.json has no way to refuse it), bytes
        into UTF-8 bytes, the same ids as ours."""
        if self.kind == "tiktoken":
            return None
        tokenizers = _tokenizers()
        if self.kind == "bpe":
            return tokenizers.Tokenizer.from_str(self.bpe_json)
        if self.kind == "bytes":
            vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
            tokenizer = _byte_level(tokenizers.models.BPE(vocab=vocab, merges=[]))
            tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                          use_regex=False)
            return tokenizer
        tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(
            vocab={c: i for i, c in enumerate(self.chars)}, merges=[]))
        tokenizer.decoder = tokenizers.decoders.Fuse()  # join the characters, no spaces between
        return tokenizer


def encode_prompt(tokenizer, text):
    """Token ids of a prompt; '<|endoftext|>' in it is the end-of-text token (GPT-2's, or an own
    BPE's), as in nanoGPT. ValueError when nothing is left to condition on."""
    if tokenizer.eot_token is not None and EOT_TEXT in text:
        pieces = text.split(EOT_TEXT)
        ids = tokenizer.encode(pieces[0])
        for piece in pieces[1:]:
            ids += [tokenizer.eot_token] + tokenizer.encode(piece)
    else:
        ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the prompt is empty after encoding; give at least one character "
                         "(sample.py without --start begins from a newline)")
    return ids


class StreamDecoder:
    """Turns tokens into text as they are generated. A BPE or byte token can hold half of a UTF-8
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
