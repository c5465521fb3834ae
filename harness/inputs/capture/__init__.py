"""Attention captured from a pretrained encoder: the model (`model.py`), the fixed texts
(`texts.py`: the texts file format and its bounds; the packaged sets `texts.txt` and `corpus/`),
capturing q, k, v through transformers' attention interface and the verified on-disk cache
(`capture.py`). The `captured` input source (`harness/inputs/captured.py`) and the benchmark kinds
that swap a model's attention use it. transformers and safetensors (the `quality` extra) are
imported lazily, inside the functions that need them.
"""
