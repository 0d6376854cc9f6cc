# Reproduce GPT-2 (124M) on OpenWebText: 8 GPUs (A100 40GB or better), about 4 days.
#   python data/openwebtext/prepare.py
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

wandb_log = False
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'

dataset = 'openwebtext'

# 12 sequences x 1024 tokens x 5 micro-steps x 8 GPUs = 491,520 tokens per step (~0.5M)
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8  # divided by the number of processes under torchrun

# 600,000 steps x 0.5M tokens = ~300B tokens
max_iters = 600000
lr_decay_iters = 600000

# evaluation
eval_interval = 1000
eval_iters = 200
log_interval = 10

weight_decay = 1e-1
