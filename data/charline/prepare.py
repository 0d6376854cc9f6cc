"""
A line dataset from any UTF-8 text file: each line is one sample (GPTBench's `charline`).

    python data/charline/prepare.py --input=lines.txt                       # writes data/charline/
    python data/charline/prepare.py --input=lines.txt --dataset=mylines --shuffle --seed=7
    python data/charline/prepare.py --input=qa.txt --dataset=qa --answer_separator="="
    python data/charline/prepare.py --input=qa.txt --dataset=qa_bpe --tokenizer=bpe --vocab_size=1024

The vocabulary is every character of the lines plus the end of line (--tokenizer=bytes, bpe or
tiktoken instead: each line is then encoded alone and the end-of-line token appended). Empty
lines and repeats of an earlier line are dropped; the lines (shuffled with --shuffle) go
80/10/10 into train.bin, val.bin and test.bin. Then: python train.py --dataset=mylines
--block_size=LONGEST ... The work is done by smallgpt/lines.py (prepare_charline), shared with
data/add and data/roman.
"""

import os
import sys

DATASET_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(DATASET_DIR)))  # the repo root, for smallgpt/lines.py

from smallgpt.lines import prepare_charline  # noqa: E402  (needs the sys.path line above)

if __name__ == "__main__":
    prepare_charline(DATASET_DIR, sys.argv[1:])
