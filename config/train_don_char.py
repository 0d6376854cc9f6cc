# A baby GPT on Don Quixote, character level: 6 layers, 6 heads, 384 wide, 256 characters of
# context (about 10.7M parameters). Prepare the data first: python data/don_char/prepare.py
# On a GPU this takes minutes; on a CPU add the small preset: config/cpu_small.py

out_dir = 'out-don-char'
eval_interval = 250  # evaluate often: a small model on a small text overfits quickly
eval_iters = 200
log_interval = 10  # don't print too often

always_save_checkpoint = False  # ckpt.pt only when val loss improves

wandb_log = False
wandb_project = 'don-char'
wandb_run_name = 'mini-gpt'

dataset = 'don_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # context of up to 256 previous characters

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # with a model this small a high learning rate is fine
max_iters = 2000
lr_decay_iters = 2000  # usually == max_iters
min_lr = 1e-4  # learning_rate / 10
beta2 = 0.99  # a little higher than GPT-2's 0.95: few tokens per iteration

warmup_iters = 100
