# Evaluate OpenAI's gpt2 (124M parameters: n_layer=12, n_head=12, n_embd=768) on OpenWebText.
#   python train.py config/eval_gpt2.py      (or just: python train.py eval_gpt2)
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
wandb_log = False
dataset = 'openwebtext'
init_from = 'gpt2'
