"""
Decimal to roman numerals as a line dataset: `1994=MCMXCIV`, one line for each of 1..3999.

    python data/roman/prepare.py                          # writes data/roman/
    python data/roman/prepare.py --seed=7 --val_fraction=0.05 --test_fraction=0.05

Generated here, offline; the 3,999 problems are shuffled with --seed and cut 80/10/10 into
train, val and test, so no number is in two splits. The answer separator is '=' (for
loss_on='answer' and accuracy; config/train_roman.py).
"""

import argparse
import os
import sys

DATASET_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(DATASET_DIR)))  # the repo root, for smallgpt/lines.py

from smallgpt.lines import prepare_task, split_arguments  # noqa: E402  (needs the sys.path line above)

# the subtractive pairs (CM, CD, XC, XL, IX, IV) sit between the letters, largest first
NUMERALS = ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
            (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"))


def to_roman(n):
    """n (1..3999) in roman numerals: take the largest value that still fits, repeatedly."""
    assert 1 <= n <= 3999, n
    out = []
    for value, letters in NUMERALS:
        count, n = divmod(n, value)
        out.append(letters * count)
    return "".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description="prepare the decimal -> roman numerals task")
    split_arguments(parser, shuffle_default=True)
    args = parser.parse_args(argv)
    lines = [f"{n}={to_roman(n)}" for n in range(1, 4000)]
    print(f"{len(lines):,} numbers, 1 to 3999")
    prepare_task(DATASET_DIR, lines, args, answer_separator="=", source="data/roman/prepare.py")


if __name__ == "__main__":
    main()
