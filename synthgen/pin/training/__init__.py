"""Training (``synthgen train-pin``): the settings, the scene streams, the loop, the run folder.

- :mod:`.config`      settings, their defaults (the paper's) and checks
- :mod:`.train`       :func:`~.train.train`, top to bottom: the run folder, the VLM, the streams, the loop
- :mod:`.loop`        the optimiser steps: phases, logging, validation, checkpoints
- :mod:`.sources`     where scenes come from (shards or composed on the fly) and the run's phases
- :mod:`.data`        streaming scene shards; :mod:`.scenes` scenes composed in the DataLoader workers
- :mod:`.checkpoint`  the run folder: checkpoints, resume, loading a trained run
- :mod:`.portable`    the PIN authors' checkpoint format (PIN_OF.pt) <-> a run folder
"""
