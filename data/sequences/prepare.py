"""
Integer sequences as a line dataset: `7 12 17 22 27=32`, the first terms of an arithmetic
sequence and, after '=', the term that comes next (GPTBench's number-sequence project).

    python data/sequences/prepare.py                       # writes data/sequences/
    python data/sequences/prepare.py --text=intseq.txt     # and the lines as a plain text file
    python data/sequences/prepare.py --terms=3 --max_step=20 --dataset=seq3

Every start 0..--max_start with every step 1..--max_step (9,000 sequences by default), shown as
--terms terms; shuffled with --seed and cut 80/10/10 into train, val and test, so no sequence is
in two splits: a test line is a start and step pair the model never saw together. The plain text
file (--text) is the same lines in generated order, for gptbench's set_datasets(train_path=...).
Train: python train.py config/train_sequences.py
"""

import argparse
import os
import sys

DATASET_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(DATASET_DIR)))  # the repo root, for smallgpt/lines.py

from smallgpt.lines import prepare_task, split_arguments  # noqa: E402  (needs the sys.path line above)


def sequence_lines(terms, max_start, max_step):
    """'a a+d a+2d ...=next' for every start a in 0..max_start and step d in 1..max_step."""
    lines = []
    for start in range(max_start + 1):
        for step in range(1, max_step + 1):
            shown = " ".join(str(start + k * step) for k in range(terms))
            lines.append(f"{shown}={start + terms * step}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description="prepare integer sequences as a line dataset")
    parser.add_argument("--terms", type=int, default=5, help="terms shown before the answer")
    parser.add_argument("--max_start", type=int, default=999, help="first terms 0..max_start")
    parser.add_argument("--max_step", type=int, default=9, help="steps 1..max_step")
    parser.add_argument("--text", default=None, help="also write the lines to this text file")
    split_arguments(parser, shuffle_default=True)
    args = parser.parse_args(argv)
    if args.terms < 2 or args.max_start < 0 or args.max_step < 1:
        raise SystemExit(f"error: --terms={args.terms} (>= 2: one term shows no step), "
                         f"--max_start={args.max_start} (>= 0), --max_step={args.max_step} (>= 1)")
    lines = sequence_lines(args.terms, args.max_start, args.max_step)
    print(f"{len(lines):,} sequences of {args.terms} terms, starts 0..{args.max_start}, "
          f"steps 1..{args.max_step}")
    if args.text:
        with open(args.text, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        print(f"wrote {args.text}")
    prepare_task(DATASET_DIR, lines, args, answer_separator="=",
                 source=f"data/sequences/prepare.py --terms={args.terms} "
                        f"--max_start={args.max_start} --max_step={args.max_step}")


if __name__ == "__main__":
    main()
