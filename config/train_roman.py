# Decimal to roman numerals (data/roman: 1994=MCMXCIV, 1..3999) on a CPU.
#   python data/roman/prepare.py
#   python train.py config/train_roman.py                    # about 4 CPU-minutes on one core
#   python eval.py --out_dir=out-roman --split=test          # loss and accuracy on 400 new numbers
# Measured here: 100% of the 400 test numbers (docs/lines.md: What can a tiny
# transformer learn).

out_dir = 'out-roman'
dataset = 'roman'
device = 'cpu'
compile = False  # eager is faster for a model this small

loss_on = 'answer'  # the numbers are given: only the numeral after '=' is learned
eval_accuracy = 200  # greedy answers to 200 val numbers at every eval, logged with the losses
eval_interval = 250
eval_iters = 4  # 4 x 128 lines per split: the val split is 400 lines
log_interval = 100
always_save_checkpoint = False  # ckpt.pt when val loss improves

block_size = 20  # the longest line, '3888=MMMDCCCLXXXVIII': one line per window
batch_size = 128
gradient_accumulation_steps = 1

n_layer = 3
n_head = 4
n_embd = 96
dropout = 0.0

learning_rate = 2e-3
max_iters = 1500  # measured: 99.75% of the val numbers right by iteration 1000 of a 2000-step schedule
lr_decay_iters = 1500
min_lr = 2e-4
warmup_iters = 100
