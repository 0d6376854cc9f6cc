"""
Don Quixote (Project Gutenberg #996, Ormsby's translation) at the character level.

    python data/don_char/prepare.py                  # from the repo root, or from any folder
    python data/don_char/prepare.py --input=PATH     # use a UTF-8 text file you already have (offline)
    python data/don_char/prepare.py --tokenizer=bytes --dataset=don_bytes   # raw UTF-8 bytes instead

Reads data/don_char/input.txt (downloading it from the url below when missing), cleans it (BOM, CRLF,
Project Gutenberg header/footer) and writes train.bin, val.bin and meta.json next to this file.
The work is done by smallgpt/prepare.py (prepare_text), shared by every text dataset;
--tokenizer=char|bytes|bpe|tiktoken picks the tokenizer (docs/tokenizers.md).
"""

import os
import sys

DATASET_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(DATASET_DIR)))  # the repo root, for smallgpt/prepare.py

from smallgpt.prepare import prepare_char  # noqa: E402  (needs the sys.path line above)

URL = "https://www.gutenberg.org/cache/epub/996/pg996.txt"

if __name__ == "__main__":
    prepare_char(DATASET_DIR, URL, sys.argv[1:])
