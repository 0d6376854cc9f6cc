"""
Compare training runs: their loss curves side by side in one PNG, plus a summary table.

    python plot.py out-a out-b [...] [--out=compare.png] [--metric=val_loss]

Each argument is a run folder (one that train.py wrote log.csv into) or the path of a log.csv.
Left panel: the eval metric (val loss by default) at each evaluation. Right panel: the training
loss at each logged step. One line per run, labelled with the run's folder name. The table
printed after lists, per run: the last iteration logged, the best and the final value of the
metric. Drawn with matplotlib's Agg renderer, so it works on a machine without a display.
"""

import argparse
import math
import os

from configurator import make_folder
from smallgpt.runlog import import_matplotlib, read_log, save_figure


def find_log(path):
    """'out-a' or 'out-a/log.csv' -> (label, csv path); a one-line SystemExit when there is no log."""
    csv_path = path if path.endswith(".csv") else os.path.join(path, "log.csv")
    if not os.path.isfile(csv_path):
        raise SystemExit(f"plot.py: no log.csv in {os.path.dirname(csv_path) or '.'}; that run needs to be "
                         f"trained with this repo's train.py, which writes it")
    folder = os.path.dirname(os.path.abspath(csv_path))
    return os.path.basename(folder), csv_path


def summarize(rows, metric):
    """(last iter, best, final) of an eval metric; None for what the log doesn't have."""
    last_iter = max((r["iter"] for r in rows), default=None)
    values = [r[metric] for r in rows if r["kind"] == "eval" and r[metric] is not None]
    finite = [v for v in values if math.isfinite(v)]
    best = min(finite) if finite else None
    final = values[-1] if values else None
    return last_iter, best, final


def print_table(summaries, metric):
    header = ("run", "last iter", f"best {metric}", f"final {metric}")
    cells = [header] + [(label, "-" if last is None else str(last),
                         "-" if best is None else f"{best:.4f}",
                         "-" if final is None else f"{final:.4f}")
                        for label, (last, best, final) in summaries]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        # run names left-aligned, numbers right-aligned so their digits line up
        print("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Compare the loss curves of training runs.")
    parser.add_argument("runs", nargs="+", help="run folders (or their log.csv files)")
    parser.add_argument("--out", default="compare.png", help="where to write the PNG")
    parser.add_argument("--metric", default="val_loss", choices=["val_loss", "train_loss"],
                        help="eval column for the left panel and the table")
    args = parser.parse_args(argv)

    runs = []  # (label, rows)
    for path in args.runs:
        label, csv_path = find_log(path)
        runs.append((label, read_log(csv_path)))
    labels = [label for label, _ in runs]
    if len(set(labels)) < len(labels):
        # two runs called out/ in different places: fall back to the paths as typed
        runs = [(path, rows) for path, (_, rows) in zip(args.runs, runs)]

    make_figure = import_matplotlib()
    if make_figure is not None:
        fig = make_figure(figsize=(13, 5))
        eval_ax, train_ax = fig.subplots(1, 2)
        for label, rows in runs:
            evals = [r for r in rows if r["kind"] == "eval" and r[args.metric] is not None]
            train = [r for r in rows if r["kind"] == "train" and r["loss"] is not None]
            # same colour for a run in both panels, so one legend reads for both
            (line,) = eval_ax.plot([r["iter"] for r in evals], [r[args.metric] for r in evals],
                                   "o-", ms=3, label=label)
            train_ax.plot([r["iter"] for r in train], [r["loss"] for r in train],
                          lw=0.8, alpha=0.8, color=line.get_color(), label=label)
        eval_ax.set_title(f"eval {args.metric.replace('_', ' ')}")
        train_ax.set_title("train loss (per logged step)")
        for ax in (eval_ax, train_ax):
            ax.set_xlabel("iteration")
            ax.set_ylabel("loss")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        out_dir = os.path.dirname(args.out)
        if out_dir:
            try:
                make_folder(out_dir, "out")
            except ValueError as e:
                raise SystemExit(f"plot.py: {e}")
        if os.path.isdir(args.out):
            raise SystemExit(f"plot.py: --out={args.out} is a folder; give a file name such as "
                             f"{os.path.join(args.out, 'compare.png')}")
        save_figure(fig, args.out)
        print(f"wrote {args.out}")

    print_table([(label, summarize(rows, args.metric)) for label, rows in runs], args.metric)


if __name__ == "__main__":
    main()
