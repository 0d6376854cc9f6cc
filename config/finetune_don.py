# Finetune GPT-2 on Don Quixote (GPT-2 BPE tokens). Prepare first: python data/don/prepare.py
# Offline, or to try it on a CPU, point init_from at a local Hugging Face GPT-2 folder:
#   python train.py config/finetune_don.py --init_from=/path/to/gpt2 --device=cpu --compile=False

out_dir = 'out-don'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'don'
wandb_run_name = 'ft-' + 'gpt2'

dataset = 'don'
init_from = 'gpt2'  # the smallest GPT-2 (124M); gpt2-medium/-large/-xl need more memory

# only save checkpoints if the validation loss improves
always_save_checkpoint = False

# 1 batch of 1024 tokens x 32 accumulation steps = 32,768 tokens per iteration;
# Don Quixote is ~617K tokens, so 20 iterations is about one epoch
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# finetune at a constant, small learning rate
learning_rate = 3e-5
decay_lr = False
