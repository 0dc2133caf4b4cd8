"""The compose stage: the composition function C over an object bank and backgrounds.

- :mod:`.config`       settings and their checks (defaults = the paper's)
- :mod:`.layout`       grid layout and the overlap rule (pure)
- :mod:`.referral`     referral words and their resolver (pure)
- :mod:`.bank`         object bank reader; :mod:`.backgrounds` background sources
- :mod:`.scene`        one scene from ``(seed, index, inputs)``
- :mod:`.run`          the driver: shards, resume, stats, manifest
- :mod:`.inspection`   ``preview`` and ``stats``; :mod:`.export` ``export-coco``
"""
