"""The train-pin stage: PIN (Positional Insert, CVPR 2024), a small input-agnostic tensor added
to a frozen VLM's vision features, trained on synthetic scenes to make the VLM answer with boxes.

Three rooms:

- :mod:`.models`       PIN, the VLM registry (one row per family), the adapters, OpenFlamingo
- :mod:`.training`     settings, scene streams, the training loop, the run folder
- :mod:`.evaluation`   the evaluation protocol, eval sets, scoring, predict

The settings (:mod:`.training.config`), the registry and :mod:`.models.flamingo.variants` are light;
the rest imports torch.
"""
