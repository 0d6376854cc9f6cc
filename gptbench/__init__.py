"""
gptbench: GPTBench's user-facing API over this repo, so GPTBench notebooks, scripts and command
lines run unchanged (docs/gptbench.md). A thin adapter: training is train.py, sampling and
accuracy are model.py's KV-cache decoding, datasets are prepared with smallgpt.

    from gptbench import Train, Sample, empty_config, config_run, LogFlag
    python -m gptbench.run -init=new -mode=train -name=add2 -dataset.class_name=charline ...
"""

from gptbench.config import GPTBenchError, LogFlag, empty_config, merge_config_from_sysargv
from gptbench.bench import Sample
from gptbench.training import Train, config_run

__all__ = ['Sample', 'Train', 'LogFlag', 'empty_config', 'config_run', 'merge_config_from_sysargv',
           'GPTBenchError']
