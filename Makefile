# The two commands of the README's quick start.
#   make quickstart   install, prepare Don Quixote (characters), train the CPU preset, sample
#   make test         install the test requirements and run the test suite
PYTHON ?= python

.PHONY: quickstart test

quickstart:
	$(PYTHON) -m pip install -r requirements.txt
	$(PYTHON) data/don_char/prepare.py
	$(PYTHON) train.py config/train_don_char.py config/cpu_small.py
	$(PYTHON) sample.py --out_dir=out-don-small-char --device=cpu --start=FILE:prompt/don.txt --num_samples=1 --max_new_tokens=400

test:
	$(PYTHON) -m pip install -r requirements-dev.txt
	$(PYTHON) -m pytest tests -q -n 2
