"""
Don Quixote (Project Gutenberg #996, Ormsby's translation) as GPT-2 BPE tokens (tiktoken).

    python data/don/prepare.py                  # from the repo root, or from any folder
    python data/don/prepare.py --input=PATH     # use a UTF-8 text file you already have (offline)
    python data/don/prepare.py --encoding=cl100k_base   # another tiktoken encoding (ids stored as uint32)
    python data/don/prepare.py --tokenizer=bpe --vocab_size=2048 --dataset=don_bpe2k
                                                # a BPE learned from this text: data/don_bpe2k/

Reads data/don/input.txt (downloading it from the url below when missing), cleans it (BOM, CRLF,
Project Gutenberg header/footer) and writes train.bin, val.bin and meta.json next to this file.
The work is done by smallgpt/prepare.py (prepare_text), shared by every text dataset;
--tokenizer=char|bytes|bpe|tiktoken picks the tokenizer (docs/tokenizers.md). Offline, tiktoken
needs its files cached: set TIKTOKEN_CACHE_DIR (docs/gpt2.md).
"""

import os
import sys

DATASET_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(DATASET_DIR)))  # the repo root, for smallgpt/prepare.py

from smallgpt.prepare import prepare_bpe  # noqa: E402  (needs the sys.path line above)

URL = "https://www.gutenberg.org/cache/epub/996/pg996.txt"

if __name__ == "__main__":
    prepare_bpe(DATASET_DIR, URL, sys.argv[1:])
