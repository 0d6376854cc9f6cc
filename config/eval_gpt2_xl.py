# Evaluate OpenAI's gpt2-xl (1558M parameters: n_layer=48, n_head=25, n_embd=1600) on OpenWebText.
#   python train.py config/eval_gpt2_xl.py      (or just: python train.py eval_gpt2_xl)
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
wandb_log = False
dataset = 'openwebtext'
init_from = 'gpt2-xl'
