"""
Tokens <-> text: the dataset's vocabulary (characters from meta.json, or a tiktoken BPE such as
GPT-2's), prompt encoding, and streamed decoding that never prints half a UTF-8 character.
"""

import codecs

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
