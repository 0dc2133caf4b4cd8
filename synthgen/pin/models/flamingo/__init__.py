"""OpenFlamingo in synthgen: the Flamingo model, its variants and its loader (no open-flamingo package).

- :mod:`.model`     perceiver resampler, gated cross-attention layers wrapped around a Hugging Face
                    causal LM, and the point between vision encoder and perceiver where PIN is added
- :mod:`.mpt`       MosaicML MPT checkpoints (``mosaic_gpt`` and ``mpt`` layouts) in transformers'
                    ``MptForCausalLM``, without ``trust_remote_code``
- :mod:`.variants`  the released OpenFlamingo checkpoints by hub id and how their parts are chosen
- :mod:`.loading`   vision encoder + tokenizer + LM + ``checkpoint.pt`` -> a ready :class:`.model.Flamingo`

The state-dict keys are those of open_flamingo 2.0.1's ``Flamingo``, so its released ``checkpoint.pt``
files load by key. This package module is light (no torch import); the submodules but
:mod:`.variants` import torch.
"""
