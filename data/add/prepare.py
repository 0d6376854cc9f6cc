"""
Addition problems as a line dataset: `12+34=46`, one per line, every pair of numbers with up to
--digits digits (0..99 for 2 digits: 10,000 problems).

    python data/add/prepare.py --digits=2                 # writes data/add/
    python data/add/prepare.py --digits=2 --reverse       # answers written backwards: 12+39=15
    python data/add/prepare.py --digits=3 --problems=100000 --dataset=add3
    python data/add/prepare.py --digits=3 --tokenizer=bpe --vocab_size=1024 --dataset=add3_bpe

Generated here, offline; the problems are shuffled with --seed and cut 80/10/10 into train, val
and test, so no problem is in two splits (12+34 and 34+12 are two problems). The answer
separator is '=': train with loss_on='answer' to learn only the sums (config/train_add.py).
--reverse writes the sum's digits lowest first, the order in which carries are worked out.
"""

import argparse
import os
import random
import sys

DATASET_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(DATASET_DIR)))  # the repo root, for smallgpt/lines.py

from smallgpt.lines import prepare_task, split_arguments  # noqa: E402  (needs the sys.path line above)


def addition_lines(digits, reverse=False):
    """Every 'a+b=sum' with 0 <= a, b < 10**digits, in order."""
    n = 10 ** digits
    return [f"{a}+{b}={str(a + b)[::-1] if reverse else a + b}" for a in range(n) for b in range(n)]


def main(argv=None):
    parser = argparse.ArgumentParser(description="prepare the addition task as a line dataset")
    parser.add_argument("--digits", type=int, default=2, help="numbers from 0 to 10**digits - 1")
    parser.add_argument("--reverse", action="store_true", help="write each sum's digits backwards")
    parser.add_argument("--problems", type=int, default=0,
                        help="keep this many problems, drawn with --seed (0 = all of them)")
    split_arguments(parser, shuffle_default=True)
    args = parser.parse_args(argv)
    if not 1 <= args.digits <= 4:
        raise SystemExit(f"error: --digits={args.digits}: use 1 to 4 (4 digits are 10**8 problems; "
                         f"add --problems to draw some)")
    lines = addition_lines(args.digits, args.reverse)
    if args.problems:
        if not 0 < args.problems <= len(lines):
            raise SystemExit(f"error: --problems={args.problems}: there are {len(lines):,} problems "
                             f"with {args.digits} digits")
        lines = random.Random(args.seed).sample(lines, args.problems)
    print(f"{len(lines):,} addition problems with up to {args.digits} digits"
          + (", sums reversed" if args.reverse else ""))
    prepare_task(DATASET_DIR, lines, args, answer_separator="=",
                 source=f"data/add/prepare.py --digits={args.digits}"
                        + (" --reverse" if args.reverse else ""))


if __name__ == "__main__":
    main()
