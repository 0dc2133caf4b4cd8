"""The train-pin stage: PIN (Positional Insert, CVPR 2024), a small input-agnostic tensor added
to a frozen VLM's vision features, trained on synthetic scenes to make the VLM answer with boxes.

- :mod:`.config`      train settings, their defaults and checks; the supported VLMs
- :mod:`.module`      the PIN module (sinusoid/learned table + MLP)
- :mod:`.adapters`    VLM adapters: where PIN goes, prompts, generation
- :mod:`.flamingo`    OpenFlamingo built in synthgen (no open-flamingo package); loads its checkpoint.pt
- :mod:`.data`        WebDataset scene streaming for training
- :mod:`.train`       the training loop; :mod:`.checkpoint` the run folder (checkpoints, resume)
- :mod:`.protocol`    the evaluation protocol's maths; :mod:`.evaluate` eval sets and scoring
- :mod:`.predict`     one image, one text
- :mod:`.portable`    the PIN authors' checkpoint format (PIN_OF.pt) <-> a run folder
- :mod:`.tiny`        a tiny random-weight BLIP-2 saved to disk, for tests and demos;
  :mod:`.tiny_flamingo` the same for OpenFlamingo

Everything here but :mod:`.config` and :mod:`.flamingo.variants` imports torch.
"""
