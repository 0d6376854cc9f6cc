# Evaluate OpenAI's gpt2-large (774M parameters: n_layer=36, n_head=20, n_embd=1280) on OpenWebText.
#   python train.py config/eval_gpt2_large.py      (or just: python train.py eval_gpt2_large)
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
wandb_log = False
dataset = 'openwebtext'
init_from = 'gpt2-large'
