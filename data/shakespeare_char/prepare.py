"""
Tiny Shakespeare (about 1 MB, 40,000 lines of plays) at the character level.

    python data/shakespeare_char/prepare.py                  # from the repo root, or from any folder
    python data/shakespeare_char/prepare.py --input=PATH     # use a UTF-8 text file you already have (offline)
    python data/shakespeare_char/prepare.py --tokenizer=bytes --dataset=shakespeare_bytes   # raw UTF-8 bytes instead

Reads data/shakespeare_char/input.txt (downloading it from the url below when missing), cleans it (BOM, CRLF,
Project Gutenberg header/footer) and writes train.bin, val.bin and meta.json next to this file.
The work is done by smallgpt/prepare.py (prepare_text), shared by every text dataset;
--tokenizer=char|bytes|bpe|tiktoken picks the tokenizer (docs/tokenizers.md).
"""

import os
import sys

DATASET_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(DATASET_DIR)))  # the repo root, for smallgpt/prepare.py

from smallgpt.prepare import prepare_char  # noqa: E402  (needs the sys.path line above)

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"

if __name__ == "__main__":
    prepare_char(DATASET_DIR, URL, sys.argv[1:])
