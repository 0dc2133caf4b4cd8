"""The models of train-pin: PIN itself, the VLMs it is added to, and the table of those VLMs.

- :mod:`.module`     the PIN module (sinusoid/learned table + MLP)
- :mod:`.registry`   the supported VLM families: one row each (default checkpoint, model types,
                     options, adapter class)
- :mod:`.adapters`   one adapter per family: where PIN goes, prompts, loss, generation
- :mod:`.flamingo`   OpenFlamingo built in synthgen (no open-flamingo package); loads its checkpoint.pt
- :mod:`.native`     boxes in the VLMs' own grounding answers (``eval-pin --baseline native``)
- :mod:`.methods`    the methods trained beside PIN (``train-pin --method``: CoOp, VPT, LoRA, full)

Light: nothing here imports torch until a submodule that needs it is imported.
"""

ACTIVATIONS = ("silu", "swiglu")   # the PIN MLP's: silu (the authors' code), swiglu (the paper's text)
TABLES = ("sinusoid", "learned")   # the PIN input table: fixed sinusoid (the authors') or learned
PRECISIONS = ("auto", "bf16", "fp16", "fp16-mixed", "fp32")  # the frozen VLM's (synthgen.pin.runtime)
# transformers' attn_implementation values; auto: its own choice (sdpa where the model has it)
ATTENTION = ("auto", "sdpa", "flash_attention_2", "eager")
# train-pin --method: PIN, or a method of the paper's Table 1 beside it (synthgen.pin.models.methods)
METHODS = ("pin", "coop", "vpt-fusion", "vpt-vision", "lora-vision", "full")
# each method's size options (--method-option KEY=N) with the paper's values as defaults
METHOD_OPTIONS = {"pin": {}, "coop": {"tokens": 16}, "vpt-fusion": {"tokens": 100}, "vpt-vision": {"tokens": 100},
                  "lora-vision": {"r": 16, "alpha": 16}, "full": {}}
