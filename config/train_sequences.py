# Integer sequences (data/sequences: 7 12 17 22 27=32, the next term of an arithmetic sequence).
#   python data/sequences/prepare.py
#   python train.py config/train_sequences.py
#   python eval.py --out_dir=out-sequences --split=test      # accuracy on 900 unseen (start, step) pairs
# What it asks of a model, and what it reached (97.8% of the test lines): docs/gptbench.md

out_dir = 'out-sequences'
dataset = 'sequences'
device = 'cpu'
compile = False  # eager is faster for a model this small

loss_on = 'answer'  # the terms shown are given; only the next one can be learned
eval_accuracy = 200  # greedy answers to 200 val sequences at every eval, logged with the losses
eval_interval = 250
eval_iters = 4  # 4 x 128 lines per split: the val split is 900 lines
log_interval = 50
always_save_checkpoint = False  # ckpt.pt when val loss improves

block_size = 28  # the longest line, '993 1001 1009 1017 1025=1033': one line per window
batch_size = 128
gradient_accumulation_steps = 1

n_layer = 3
n_head = 4
n_embd = 96
dropout = 0.0

learning_rate = 2e-3
max_iters = 1500
lr_decay_iters = 1500
min_lr = 2e-4
warmup_iters = 100
