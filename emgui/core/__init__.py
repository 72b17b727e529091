"""Qt-free core: store, jobs, models, datasets, training, evaluation, SAEs, steering.

Nothing under this package may import Qt (tests/test_architecture.py enforces it), and heavy
libraries (torch, transformers, peft, sae_lens) are imported inside the functions that need them.
"""
