"""synthgen: synthetic grounding data for vision-language models (the PIN pipeline).

Stages: ``render`` (objects from text), ``compose`` (the composition function C over
backgrounds, written as WebDataset shards) and ``train-pin`` (PIN on a frozen VLM).
See ARCHITECTURE.md for where each concern lives. Heavy libraries (torch, diffusers, rembg, ray) are imported lazily by the stage that needs them.
"""

__version__ = "0.1.0"
