# nanoGPT's CPU recipe (the DI725 course's "low on resources" run) as a preset: put it after a
# dataset config.
#   python train.py config/train_don_char.py config/cpu_small.py
# is the same run as the DI725 course's command line
#   python train.py config/train_don_char.py --device=cpu --compile=False --eval_iters=20
#     --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
#     --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
# except that it writes to out-don-small-char (the course's folder), not over the big model's.

device = 'cpu'
compile = False  # measured slower than eager for this small model on a CPU
eval_iters = 20  # a noisier but much faster estimate
log_interval = 1
block_size = 64
batch_size = 12
n_layer = 4
n_head = 4
n_embd = 128
max_iters = 2000
lr_decay_iters = 2000
dropout = 0.0  # a model this small barely overfits

# out-don-char -> out-don-small-char, out-shakespeare-char -> out-shakespeare-small-char
out_dir = out_dir[:-len('-char')] + '-small-char' if out_dir.endswith('-char') else out_dir + '-small'
