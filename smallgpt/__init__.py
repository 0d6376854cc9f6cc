"""
smallgpt: the library behind the scripts (train.py, sample.py, eval.py, export.py, bench.py) and
model.py. Each module holds one idea; docs/architecture.md has the map. The package never
imports model.py: where it needs the model, the caller hands it in.
"""
