"""PIN (Positional Insert, CVPR 2024): a small input-agnostic tensor added to a frozen VLM's
vision features, trained on synthetic scenes to make the VLM answer with boxes in text.

Submodules (import them directly; they pull in torch/transformers):

- :mod:`synthgen.pin.module`   the PIN module (sinusoid/learned table + MLP)
- :mod:`synthgen.pin.adapters` VLM adapters (BLIP-2 first): where PIN goes, prompts, generation
- :mod:`synthgen.pin.data`     WebDataset scene streaming for training
- :mod:`synthgen.pin.train`    the training loop (``synthgen train-pin``)
- :mod:`synthgen.pin.evaluate` evaluation (``synthgen eval-pin``) and ``predict``
- :mod:`synthgen.pin.tiny`     a tiny random-weight BLIP-2 saved to disk, for tests and demos
"""
