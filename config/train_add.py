# 2-digit addition (data/add: 12+34=46) on a CPU: a small GPT that gets the held-out sums right.
#   python data/add/prepare.py --digits=2
#   python train.py config/train_add.py                      # about 3 CPU-minutes on one core
#   python eval.py --out_dir=out-add --split=test            # loss and accuracy on 1,000 new sums
# Measured here: 99.4% of the 1,000 test sums (ckpt.pt), 100% with last.pt
# (docs/lines.md: What can a tiny transformer learn).

out_dir = 'out-add'
dataset = 'add'
device = 'cpu'
compile = False  # eager is faster for a model this small

loss_on = 'answer'  # the two numbers are random: only the sum after '=' can be learned
eval_accuracy = 200  # greedy answers to 200 val problems at every eval, logged with the losses
eval_interval = 500
eval_iters = 4  # 4 x 128 lines per split: the val split is only 1,000 lines
log_interval = 100
always_save_checkpoint = False  # ckpt.pt when val loss improves

block_size = 9  # the longest line, '99+99=198': one line per window
batch_size = 128
gradient_accumulation_steps = 1

n_layer = 3
n_head = 4
n_embd = 96
dropout = 0.0  # 8,000 training lines, each seen ~40 times: not enough to overfit

learning_rate = 2e-3  # measured: 4 layers x 128 at 1e-3 needed 2500 iterations too, at 2.4x the FLOPs
max_iters = 2500
lr_decay_iters = 2500
min_lr = 2e-4
warmup_iters = 100
