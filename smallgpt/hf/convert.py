"""
A Hugging Face model in or out, whichever architecture fits: load_hf reads a GPT-2 or a
Starcoder2 (from the hub by name, or a local folder) as (GPTConfig kwargs, state dict) for
GPT.from_pretrained; save_hf writes our GPT as a GPT-2, or as a Starcoder2 when it is rotary.
"""

import os

from smallgpt.hf.common import (GPT2_NAMES, LOCAL_DIR_HINT, _looks_like_path, _transformers,
                                read_config_json, refuse_foreign_model)
from smallgpt.hf.gpt2 import config_args_from_hf, save_hf_gpt2, state_dict_from_hf
from smallgpt.hf.starcoder2 import (config_args_from_starcoder2, save_hf_starcoder2,
                                    state_dict_from_starcoder2)
from smallgpt.prepare import hub_reachable


def load_hf(name_or_dir):
    """
    (GPTConfig kwargs, state dict) for a GPT-2 on the Hugging Face Hub ('gpt2', 'gpt2-medium',
    'gpt2-large', 'gpt2-xl', 'openai-community/gpt2', ...) or in a local directory saved with
    save_pretrained; a directory may also hold a Starcoder2 (see starcoder2.py). A local
    directory never touches the network.

    Nothing that comes with a model is run: its config.json is read as JSON and a model that
    would need its own Python code (auto_map) or isn't a GPT-2 or Starcoder2 is refused before
    transformers opens the folder, and transformers is always called with trust_remote_code=False
    (so it never asks "run the custom code? [y/N]" either).
    """
    transformers = _transformers()
    from safetensors import SafetensorError  # a dependency of transformers, so there with it
    local = os.path.isdir(os.path.expanduser(name_or_dir))
    if local:
        name_or_dir = os.path.expanduser(name_or_dir)
        if not os.path.isfile(os.path.join(name_or_dir, "config.json")):
            raise ValueError(f"{name_or_dir} has no config.json; it must be a Hugging Face GPT-2 "
                             f"or Starcoder2 directory (save_pretrained writes one)")
        refuse_foreign_model(name_or_dir, read_config_json(name_or_dir))
    elif _looks_like_path(name_or_dir):
        raise FileNotFoundError(f"no such directory: {name_or_dir}; give a local Hugging Face "
                                f"GPT-2 directory or one of {', '.join(GPT2_NAMES)}")
    # A hub name is read from the local cache when it is there; the hub is asked only when it
    # answers, so an offline machine gets one line at once, not the hub client's retries.
    try:
        return _load_hf(transformers, name_or_dir, local_only=True)
    except SafetensorError as e:  # what a cut or damaged model.safetensors raises
        where = os.path.join(name_or_dir, "model.safetensors") if local else name_or_dir
        raise ValueError(f"{where} is truncated or corrupt ({first_line(e)}); download or export "
                         f"it again") from None
    except OSError as e:
        if local:
            raise ValueError(f"could not load the weights in {name_or_dir} ({first_line(e)}); it "
                             f"needs model.safetensors or pytorch_model.bin") from None
        if not hub_reachable():
            raise RuntimeError(f"{name_or_dir!r} is not in the local Hugging Face cache and the hub "
                               f"can't be reached (offline?); {LOCAL_DIR_HINT}") from None
        try:
            return _load_hf(transformers, name_or_dir, local_only=False)
        except OSError:
            raise RuntimeError(f"could not fetch the weights of {name_or_dir!r} from the Hugging "
                               f"Face Hub (no such model, or the download failed); "
                               f"{LOCAL_DIR_HINT}") from None


def first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_hf(transformers, name_or_dir, local_only):
    """(GPTConfig kwargs, state dict) of a GPT-2 or a Starcoder2. The config is checked first,
    so an unsupported model is refused before gigabytes are read."""
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_dir, local_files_only=local_only,
                                                         trust_remote_code=False)
    except ValueError as e:  # a hub model of a type transformers lacks, or with code of its own
        raise ValueError(f"{name_or_dir} is not a model transformers reads without running code "
                         f"({first_line(e)[:200]}); only Hugging Face GPT-2 and Starcoder2 load "
                         f"into model.py's GPT") from None
    refuse_foreign_model(name_or_dir, config.to_dict())  # a hub model's, now that we have it
    if config.model_type == "starcoder2":
        config_args = config_args_from_starcoder2(config)
        hf = transformers.Starcoder2ForCausalLM.from_pretrained(
            name_or_dir, config=config, local_files_only=local_only, trust_remote_code=False)
        return config_args, state_dict_from_starcoder2(hf.state_dict(), config)
    config_args = config_args_from_hf(config)
    hf = transformers.GPT2LMHeadModel.from_pretrained(
        name_or_dir, config=config, local_files_only=local_only, trust_remote_code=False)
    return config_args, state_dict_from_hf(hf.state_dict())


def save_hf(model, hf_dir, tokenizer_dir=None, tokenizer=None):
    """
    export.py's entry point: write `model` to hf_dir as the Hugging Face architecture that
    computes the same function, a Starcoder2 for a rotary model (starcoder2.py) and a GPT-2
    otherwise, so AutoModelForCausalLM.from_pretrained(hf_dir) loads it without warnings. A
    setting neither can hold is a ValueError naming it, and nothing is written. `tokenizer`:
    the model's own (smallgpt.tokenizer.Tokenizer; see common.write_hf_folder).
    Returns the tokenizer files written.
    """
    if model.config.pos_emb == "rope":
        return save_hf_starcoder2(model, hf_dir, tokenizer_dir, tokenizer)
    return save_hf_gpt2(model, hf_dir, tokenizer_dir, tokenizer)
