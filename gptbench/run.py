"""
GPTBench's command line: everything from -key=value arguments, no script needed.

    python -m gptbench.run -name=add2 -init=new -mode=train -dataset.class_name=charline \
        -dataset.train_path=add2.txt -model.n_layer=6 -model.n_head=6 -model.n_embd=90 \
        -model.block_size=16 -trainer.batch_size=128
    python -m gptbench.run -name=add2 -init=resume -mode=sample -sample.start_text="21+89="

-init: new, resume, gpt2 (gpt2-medium, gpt2-large, gpt2-xl, or a local Hugging Face GPT-2
folder); -mode: train, sample or prompt; -name: the run (default 'model'); any -section.key=value
sets that setting (gptbench/config.py lists them). config_run lives in gptbench/training.py, so
`python -m` finds this module not yet imported (no runpy warning).
"""

import sys

from gptbench.training import config_run

if __name__ == '__main__':
    config_run(None, sys.argv)
