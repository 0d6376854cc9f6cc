"""
GPTBench's add2 and decimal -> roman notebooks as one script, through the gptbench package:
write the data file, train, load the best checkpoint, measure the held-out accuracy, print the
wall time. docs/gptbench.md's table of results was made with it.

    python examples/gptbench_measure.py add2                       # the notebook's settings
    python examples/gptbench_measure.py roman                      # 1..10,000 = roman numerals
    python examples/gptbench_measure.py add2 --loss_on=answer      # this repo's settings on top
    python examples/gptbench_measure.py add2 --reverse --learning_rate=1e-3 --iters=3000
    python examples/gptbench_measure.py add2 --name=add2 --measure_only   # a run trained before

--reverse writes each sum's digits lowest first (21+89=011), the order a carry is worked out in;
the accuracy is then of the reversed answers. Runs go to ./checkpoints/<name> (GPTBench's place).
"""

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # without pip install -e .

from gptbench import Train, empty_config  # noqa: E402

# the subtractive pairs sit between the letters; above 999 GPTBench's file repeats M (4000=MMMM)
NUMERALS = ((900, 'CM'), (500, 'D'), (400, 'CD'), (100, 'C'), (90, 'XC'), (50, 'L'), (40, 'XL'),
            (10, 'X'), (9, 'IX'), (5, 'V'), (4, 'IV'), (1, 'I'))


def roman(n):
    out = 'M' * (n // 1000)
    n %= 1000
    for value, letters in NUMERALS:
        count, n = divmod(n, value)
        out += letters * count
    return out


def write_data(task, path, reverse):
    if task == 'add2':  # GPTBench's prepare_addition: every a+b=c with a, b in 0..99, in order
        lines = [f"{a}+{b}={str(a + b)[::-1] if reverse else a + b}"
                 for a in range(100) for b in range(100)]
    else:  # GPTBench's decimal2roman10k.txt: 1..10,000
        lines = [f"{n}={roman(n)}" for n in range(1, 10001)]
    with open(path, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('task', choices=('add2', 'roman'))
    parser.add_argument('--name', default=None, help="run name (default: the task and options)")
    parser.add_argument('--iters', type=int, default=3000)
    parser.add_argument('--seed', type=int, default=0xADD2B055)
    parser.add_argument('--reverse', action='store_true', help="add2: answers written backwards")
    parser.add_argument('--loss_on', default='all', help="train.py's loss_on: 'all' or 'answer'")
    parser.add_argument('--learning_rate', type=float, default=None, help="GPTBench's default: 1e-4")
    parser.add_argument('--eval_iters', type=int, default=100, help="batches per split at each eval")
    parser.add_argument('--measure_only', action='store_true',
                        help="no training: load the run's best checkpoint and measure it")
    parser.add_argument('--minutes', type=float, default=0,
                        help="stop training after this long, as Ctrl+C would (0: no limit)")
    args = parser.parse_args()

    name = args.name or '-'.join([args.task] + (['rev'] if args.reverse else []) +
                                 ([f'loss_{args.loss_on}'] if args.loss_on != 'all' else []) +
                                 ([f'lr{args.learning_rate:g}'] if args.learning_rate else []))
    if args.measure_only:
        ben = Train(name)
        ben.load()
        return measure(ben, name, None, None)
    path = f'{args.task}{"_rev" if args.reverse else ""}.txt'
    write_data(args.task, path, args.reverse)

    ben = Train(name, seed=args.seed)
    ben.set_train_log_periods(sample_period=500, dot_period=0, loss_period=-1)
    # roman: GPTBench's notebook keeps 8,999 lines to train, 1,001 to validate
    ben.set_datasets(class_name='charline', train_path=path,
                     train_split=0.9 if args.task == 'add2' else (9000 - 1) / 10000, pre_shuffle=True)
    cfg = empty_config()
    cfg.model.set(n_layer=6, n_head=6, n_embd=90, block_size=16 if args.task == 'add2' else 32)
    cfg.sample.set(top=1, max_batch_size=256)
    cfg.trainer.set(batch_size=128)
    cfg.train.set(eval_iters=args.eval_iters)
    if args.learning_rate:
        cfg.trainer.set(learning_rate=args.learning_rate)
    if args.loss_on != 'all':
        cfg.train_py.set(loss_on=args.loss_on, answer_separator='=')
    ben.init_new(cfg)

    started = time.time()
    if args.minutes:  # a shared machine: the time limit is Ctrl+C; train() keeps what it has
        signal.signal(signal.SIGALRM, signal.default_int_handler)
        signal.alarm(int(args.minutes * 60))
    ben.train(iter_count=args.iters)
    signal.alarm(0)
    trained = ben.state['iter_num']
    train_seconds = time.time() - started
    ben.load()
    measure(ben, name, train_seconds, f"{trained} iterations of {args.iters}")


def measure(ben, name, train_seconds, trained):
    """The greedy accuracy on the validation lines (the model never trained on them)."""
    q, a = ben.val_dataset.get_data_split(0, len(ben.val_dataset), sep='=', sep_included=-1)
    wrong = []
    accuracy = ben.measure_accuracy(q, a, log_list=wrong)
    took = f", training {train_seconds / 60:.1f} min wall, {trained}" if train_seconds else ""
    print(f"RESULT {name}: {accuracy:.2%} of {len(q):,} held-out lines right (best checkpoint "
          f"at iteration {ben.state['iter_num']}){took}; some wrong: {wrong[:5]}")


if __name__ == '__main__':
    main()
