# Evaluate OpenAI's gpt2-medium (350M parameters: n_layer=24, n_head=16, n_embd=1024) on OpenWebText.
#   python train.py config/eval_gpt2_medium.py      (or just: python train.py eval_gpt2_medium)
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
wandb_log = False
dataset = 'openwebtext'
init_from = 'gpt2-medium'
