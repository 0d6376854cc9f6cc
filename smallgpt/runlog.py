"""
The training-run logger: one CSV that is always written, a loss plot, optional TensorBoard and wandb.

train.py makes one RunLog on rank 0 and feeds it every logged step and every evaluation:

    from smallgpt.runlog import RunLog
    log = RunLog(out_dir, config, resume_iter=iter_num if resuming else None,
                 tensorboard=False, wandb=False, wandb_project='owt', wandb_run_name='gpt2',
                 evaluate_only=False)   # True: a run that only evaluates writes nothing
    log.train(iter_num, loss, lr, ms_per_iter, tokens_per_s, mfu)   # mfu may be None
    log.eval(iter_num, train_loss, val_loss, lr, accuracy)          # accuracy may be None;
                                                                    # also redraws loss.png
    log.sample(iter_num, text)                                      # sample_interval's text
    log.close()

What lands in out_dir:
    log.csv       iter,kind,loss,train_loss,val_loss,lr,ms_per_iter,tokens_per_s,mfu,accuracy
                  kind is 'train', 'eval' or 'resume'; cells that don't apply stay empty
                  (accuracy: a fraction, at evals of runs with eval_accuracy on a line dataset).
                  Flushed after every row, so a killed run keeps its log. A resumed run keeps
                  the rows before the resume iteration, adds a row of kind 'resume' (only iter
                  filled in) and carries on below it.
    log.N.csv     an earlier log, kept whole: set aside (with its loss.png as loss.N.png) when
                  a new run in the same out_dir writes its first row, or when a resume drops
                  rows logged after its checkpoint (resuming from a ckpt.pt older than last.pt,
                  or after a kill between saves). N counts up from 1; log.csv is the newest.
                  Nothing is moved or rewritten before this run has a row to write, so a run
                  that stops at start-up leaves the folder as it found it.
    samples.txt   the samples of train.py's sample_interval, each under a line '--- iteration N'
                  (smallgpt/train_sample.py). A new run keeps an earlier one's aside with its
                  log (samples.N.txt); a resumed run appends, so a sample's line names its
                  iteration, not the order alone.
    loss.png      train loss (thin), eval train/val loss (markers), learning rate (right axis);
                  below them the val accuracy, when the run measures it.
    tensorboard/  event files, when tensorboard=True  (tensorboard --logdir <out_dir>); an
                  earlier run's folder is set aside as tensorboard.N/, shown as a run of its own
    wandb/        the wandb run folder, when wandb=True (WANDB_MODE=offline works)

An evaluate-only run (train.py with eval_only=True, or resumed at max_iters, as in
--init_from=resume --max_iters=0) writes no rows and touches none of these: its numbers are the
checkpoint's, which the log already has, and it prints them.

What it is not: a metrics framework. plot.py reads log.csv back to compare runs side by side.
"""

import csv
import math
import os
import re
import threading
import time

COLUMNS = ("iter", "kind", "loss", "train_loss", "val_loss", "lr", "ms_per_iter", "tokens_per_s", "mfu",
           "accuracy")


def read_log(csv_path):
    """Rows of a log.csv as dicts: 'iter' an int, 'kind' a str, every other column a float or None."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "iter" not in reader.fieldnames or "kind" not in reader.fieldnames:
            raise ValueError(f"{csv_path} is not a RunLog log.csv (header {reader.fieldnames}); "
                             f"delete it or point at a folder written by train.py")
        rows = []
        for raw in reader:
            row = _parse_row(raw)
            if row is not None:
                rows.append(row)
    return rows


def _parse_row(raw):
    # A run killed in the middle of a write can leave a torn last line; such a row is skipped
    # rather than stopping a resume or a plot.
    try:
        row = {"iter": int(raw["iter"]), "kind": raw["kind"]}
        for name in COLUMNS[2:]:
            cell = raw.get(name)
            row[name] = float(cell) if cell not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return row


def _has_rows(csv_path):
    """Whether a file holds anything past its first line (a log with rows, or not a log at all:
    either way not ours to write over)."""
    if not os.path.isfile(csv_path):
        return False
    with open(csv_path, "rb") as f:
        f.readline()
        return bool(f.read().strip())


def _format_cell(value):
    if value is None:
        return ""
    if isinstance(value, (int, str)):  # iter and kind
        return str(value)
    # 7 significant digits: exact enough for losses and learning rates, and a tokens/s figure
    # up to ten million still prints without an exponent.
    return f"{float(value):.7g}"


def plot_title(config):
    """'shakespeare_char · 6 layers, 6 heads, 384 wide' from whichever of those keys config has."""
    parts = []
    if config.get("dataset"):
        parts.append(str(config["dataset"]))
    shape = [f"{config[key]} {label}" for key, label in
             (("n_layer", "layers"), ("n_head", "heads"), ("n_embd", "wide")) if key in config]
    if shape:
        parts.append(", ".join(shape))
    return " · ".join(parts) or "training run"


def import_matplotlib():
    """matplotlib's Figure class, or None with a note when it isn't installed.

    Figure plus savefig needs no pyplot and no global backend switch, so it renders with Agg
    even on a headless node and never touches the backend of whoever imported us."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("note: matplotlib is not installed, so no plots are drawn (pip install matplotlib)")
        return None
    return Figure


def save_figure(fig, png_path):
    """Write to a temp file, then rename over png_path, so a viewer never shows half a PNG."""
    tmp_path = png_path + ".tmp"
    fig.savefig(tmp_path, format="png", dpi=110)
    os.replace(tmp_path, png_path)


class RunLog:
    # Drawing loss.png takes ~0.25 s (most of it PNG encoding) and importing matplotlib ~0.3 s;
    # a small CPU run evaluates every few seconds, where redrawing at every eval cost 5% of the
    # run. So: draw at the first eval, then at most this often, in a background thread while
    # training goes on, and always at the end.
    min_seconds_between_plots = 20.0

    def __init__(self, out_dir, config, resume_iter=None, tensorboard=False, wandb=False,
                 wandb_project="owt", wandb_run_name="gpt2", plot=True, evaluate_only=False):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir = out_dir
        self.config = dict(config)
        self.csv_path = os.path.join(out_dir, "log.csv")
        self.png_path = os.path.join(out_dir, "loss.png")
        self.samples_path = os.path.join(out_dir, "samples.txt")
        self.resume_iter = resume_iter
        self.evaluate_only = evaluate_only
        self.rows = []  # every row of this run, resumed ones included, so loss.png shows it all
        self.earlier_rows = []  # what log.csv held when we came, on a resume
        if resume_iter is not None and not evaluate_only and os.path.exists(self.csv_path):
            self.earlier_rows = read_log(self.csv_path)
            # the resumed run redoes the eval at resume_iter but not the step that led to it
            self.rows = [row for row in self.earlier_rows if row["iter"] < resume_iter
                         or (row["iter"] == resume_iter and row["kind"] == "train")]
        self.csv_file = None  # opened at the first row: until then out_dir stays as it was
        self.aside_number = None  # the N of log.N.csv, tensorboard.N, ... once one is kept aside

        self.plot = plot and not evaluate_only
        self.make_figure = None  # matplotlib's Figure class, imported at the first draw
        self.last_draw = None  # time.monotonic() of the last loss.png
        self.plot_is_stale = False
        self.drawing = None  # the thread drawing loss.png in the background, if one is

        self.tb_writer = None
        self.make_tb_writer = None  # SummaryWriter, made at the first row like log.csv
        if tensorboard and not evaluate_only:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise SystemExit("tensorboard=True but tensorboard is not installed; run: pip install tensorboard")
            self.make_tb_writer = SummaryWriter

        self.wandb = None
        if wandb and not evaluate_only:
            try:
                import wandb as wandb_module
            except ImportError:
                raise SystemExit("wandb=True but wandb is not installed; run: pip install wandb")
            wandb_module.init(project=wandb_project, name=wandb_run_name, config=self.config, dir=out_dir)
            self.wandb = wandb_module

    def _keep_aside(self, names, why):
        """Rename each of `names` that exists in out_dir to its numbered name (log.csv ->
        log.N.csv, tensorboard -> tensorboard.N), one N for all, and say so in one line."""
        names = [name for name in names if os.path.exists(os.path.join(self.out_dir, name))]
        if not names:
            return
        if self.aside_number is None:  # 1 + the highest N already there
            numbered = re.compile(r"(?:log|loss|samples|tensorboard)\.(\d+)(?:\.csv|\.png|\.txt)?")
            taken = [int(m.group(1)) for m in map(numbered.fullmatch, os.listdir(self.out_dir)) if m]
            self.aside_number = 1 + max(taken, default=0)
        kept = []
        for name in names:
            stem, dot, ext = name.partition(".")
            aside = f"{stem}.{self.aside_number}{dot}{ext}"
            os.replace(os.path.join(self.out_dir, name), os.path.join(self.out_dir, aside))
            kept.append(f"{name} as {aside}")
        print(f"note: {why}; kept the earlier {', '.join(kept)} in {self.out_dir}")

    def _start(self):
        """At the first row: put log.csv (and tensorboard/) in order for this run, keeping
        whole everything an earlier run wrote that this run won't carry on."""
        tb_dir = os.path.join(self.out_dir, "tensorboard")
        if self.resume_iter is None:
            earlier = ["log.csv", "loss.png"] if _has_rows(self.csv_path) else []
            earlier += ["samples.txt"] if os.path.isfile(self.samples_path) else []
            if self.make_tb_writer is not None and os.path.isdir(tb_dir) and os.listdir(tb_dir):
                earlier.append("tensorboard")
            self._keep_aside(earlier, "a new run starts here")
            self.csv_file = open(self.csv_path, "w", newline="")
            self.csv_file.write(",".join(COLUMNS) + "\n")
            self.csv_file.flush()
        else:
            if any(row["iter"] > self.resume_iter for row in self.earlier_rows):
                # the run went on past the checkpoint we resume from: the new log.csv keeps the
                # rows up to it, and the earlier one stays whole beside it. (The eval at
                # resume_iter alone is no loss: this run redoes it on the same weights.)
                self._keep_aside(["log.csv", "loss.png"], f"log.csv goes on past iteration "
                                 f"{self.resume_iter}, where this run resumes")
            marker = {name: None for name in COLUMNS}
            marker.update(iter=int(self.resume_iter), kind="resume")
            self.rows.append(marker)
            self._rewrite_csv(self.rows)
            self.csv_file = open(self.csv_path, "a", newline="")
        if self.make_tb_writer is not None:
            # purge_step hides the events at or after it that the run we resume left in the
            # folder (its eval at resume_iter is redone), as log.csv keeps only the rows before
            self.tb_writer = self.make_tb_writer(
                log_dir=tb_dir, purge_step=None if self.resume_iter is None else self.resume_iter + 1)

    def _rewrite_csv(self, rows):
        # Temp file + rename: if we die here, log.csv is either the old file or the new one.
        tmp_path = self.csv_path + ".tmp"
        with open(tmp_path, "w", newline="") as f:
            f.write(",".join(COLUMNS) + "\n")
            for row in rows:
                f.write(",".join(_format_cell(row[name]) for name in COLUMNS) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, self.csv_path)

    def _append(self, **values):
        row = {name: values.get(name) for name in COLUMNS}
        if self.evaluate_only:
            self.rows.append(row)  # kept in memory only: this run changes nothing on disk
            return
        if self.csv_file is None:
            self._start()
        self.rows.append(row)
        self.csv_file.write(",".join(_format_cell(row[name]) for name in COLUMNS) + "\n")
        self.csv_file.flush()

    def _scalars(self, iter_num, scalars):
        scalars = {tag: value for tag, value in scalars.items() if value is not None}
        if self.tb_writer is not None:
            for tag, value in scalars.items():
                self.tb_writer.add_scalar(tag, value, iter_num)
        if self.wandb is not None:
            self.wandb.log(scalars, step=iter_num)

    def train(self, iter_num, loss, lr, ms_per_iter, tokens_per_s, mfu):
        """One logged training step. mfu is a fraction of peak FLOPs, or None when not measured yet."""
        assert not self.evaluate_only, f"an evaluate-only run logged a training step (iter {iter_num})"
        self._append(iter=int(iter_num), kind="train", loss=float(loss), lr=float(lr),
                     ms_per_iter=float(ms_per_iter), tokens_per_s=float(tokens_per_s),
                     mfu=None if mfu is None else float(mfu))
        self._scalars(iter_num, {"train/loss": float(loss), "lr": float(lr),
                                 "perf/ms_per_iter": float(ms_per_iter),
                                 "perf/tokens_per_s": float(tokens_per_s),
                                 "perf/mfu": None if mfu is None else float(mfu)})

    def eval(self, iter_num, train_loss, val_loss, lr, accuracy=None):
        """One evaluation (accuracy: a fraction of val lines answered right, or None); also
        redraws loss.png."""
        accuracy = None if accuracy is None else float(accuracy)
        self._append(iter=int(iter_num), kind="eval", train_loss=float(train_loss),
                     val_loss=float(val_loss), lr=float(lr), accuracy=accuracy)
        self._scalars(iter_num, {"eval/train_loss": float(train_loss),
                                 "eval/val_loss": float(val_loss), "lr": float(lr),
                                 "eval/accuracy": accuracy})
        if self.tb_writer is not None:
            self.tb_writer.flush()  # evals are rare, so flushing here costs nothing and a kill loses little
        if self.plot:
            self.plot_is_stale = True
            busy = self.drawing is not None and self.drawing.is_alive()
            if not busy and (self.last_draw is None or
                             time.monotonic() - self.last_draw >= self.min_seconds_between_plots):
                self.last_draw, self.plot_is_stale = time.monotonic(), False
                # a snapshot of the rows: the loop goes on appending while the thread draws
                self.drawing = threading.Thread(target=self.draw, args=(list(self.rows),), daemon=True)
                self.drawing.start()

    def sample(self, iter_num, text):
        """A sample taken while training (train.py's sample_interval), added to samples.txt."""
        if self.evaluate_only:
            return
        if self.csv_file is None:
            self._start()  # a new run sets the earlier samples.txt aside first
        with open(self.samples_path, "a", encoding="utf-8") as f:
            f.write(f"--- iteration {int(iter_num)}\n{text}\n")
        if self.tb_writer is not None:
            self.tb_writer.add_text("sample", text, iter_num)

    def draw(self, rows=None):
        """Draw loss.png from `rows` (default: every row so far)."""
        rows = self.rows if rows is None else rows
        if self.make_figure is None:
            self.make_figure = import_matplotlib()
            if self.make_figure is None:
                self.plot = False
                return
        train = [r for r in rows if r["kind"] == "train" and r["loss"] is not None]
        evals = [r for r in rows if r["kind"] == "eval"]
        accuracy = [r for r in evals if r["accuracy"] is not None]
        fig = self.make_figure(figsize=(9, 7 if accuracy else 5))
        if accuracy:  # a panel of its own below: a fraction doesn't share an axis with losses
            ax, acc_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [5, 2]})
            acc_ax.plot([r["iter"] for r in accuracy], [100 * r["accuracy"] for r in accuracy],
                        "o-", ms=3, color="tab:red", label="eval: val accuracy")
            acc_ax.set_ylim(-2, 102)
            acc_ax.set_ylabel("accuracy (%)")
            acc_ax.set_xlabel("iteration")
            acc_ax.grid(alpha=0.3)
            acc_ax.legend(loc="lower right", fontsize=8)
        else:
            ax = fig.add_subplot()
        if train:
            ax.plot([r["iter"] for r in train], [r["loss"] for r in train],
                    lw=0.6, alpha=0.35, color="tab:blue", label="train loss (per logged step)")
        if evals:
            iters = [r["iter"] for r in evals]
            ax.plot(iters, [r["train_loss"] for r in evals], "o-", ms=3, color="tab:blue", label="eval: train loss")
            ax.plot(iters, [r["val_loss"] for r in evals], "o-", ms=3, color="tab:orange", label="eval: val loss")
        if not accuracy:
            ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)

        # lr comes from train rows and eval rows alike; sort so the line doesn't zigzag.
        lr_points = sorted((r["iter"], r["lr"]) for r in rows if r["lr"] is not None and math.isfinite(r["lr"]))
        lines, labels = ax.get_legend_handles_labels()
        if lr_points:
            lr_ax = ax.twinx()
            lr_ax.plot([i for i, _ in lr_points], [lr for _, lr in lr_points],
                       lw=1, ls="--", color="tab:green", label="learning rate")
            lr_ax.set_ylabel("learning rate")
            lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            lr_lines, lr_labels = lr_ax.get_legend_handles_labels()
            lines, labels = lines + lr_lines, labels + lr_labels
        if lines:
            ax.legend(lines, labels, loc="upper right", fontsize=8)
        ax.set_title(plot_title(self.config))
        fig.tight_layout()
        save_figure(fig, self.png_path)

    def wait_for_plot(self):
        """Return once the loss.png being drawn in the background (if any) is on disk."""
        if self.drawing is not None:
            self.drawing.join()
            self.drawing = None

    def close(self):
        """Draw the last evals, flush and close everything; safe to call twice."""
        self.wait_for_plot()  # before the final draw, which must be the last to write loss.png
        if self.plot and self.plot_is_stale:
            self.plot_is_stale = False
            self.draw()
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
