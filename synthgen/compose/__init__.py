"""The compose stage: the composition function C over an object bank and backgrounds.

- :mod:`.config`       settings and their checks (defaults = the paper's)
- :mod:`.layout`       grid layout and the overlap rule (pure)
- :mod:`.referral`     referral words and their resolver (pure)
- :mod:`.bank`         object bank reader; :mod:`.backgrounds` background sources
- :mod:`.scene`        one scene from ``(seed, index, inputs)``
- :mod:`.run`          the driver: shards, resume, stats, manifest
- :mod:`.inspection`   ``preview``; :mod:`.stats` ``stats``; :mod:`.export` ``export-coco``
"""

import sys
import types


class _Stage(types.ModuleType):
    """This package, callable: ``synthgen.compose(...)`` is :func:`synthgen.api.compose` (the
    package and the API function share the name, so the package is made callable)."""

    def __call__(self, *args, **kwargs):
        from synthgen import api

        return api.compose(*args, **kwargs)


sys.modules[__name__].__class__ = _Stage
