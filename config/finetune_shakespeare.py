# Finetune GPT-2 XL on tiny Shakespeare (GPT-2 BPE), nanoGPT's recipe.
# Prepare first: python data/shakespeare/prepare.py. Needs a large GPU (1.5B parameters).

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + 'gpt2-xl'

dataset = 'shakespeare'
init_from = 'gpt2-xl'  # the largest GPT-2

# only save checkpoints if the validation loss improves
always_save_checkpoint = False

# 1 batch of 1024 tokens x 32 accumulation = 32,768 tokens per iteration;
# Shakespeare is ~338K tokens, so 20 iterations is about two epochs
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# finetune at a constant, small learning rate
learning_rate = 3e-5
decay_lr = False
