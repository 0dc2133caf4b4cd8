"""``synthgen export``: scene shards to the fine-tuning frameworks' datasets, boxes in each VLM
family's own convention.

- :mod:`.boxes`       the box conventions (pure)
- :mod:`.containers`  the files of each framework
- :mod:`.run`         the driver: shards, images once, resume, --limit
"""

import sys
import types


class _Stage(types.ModuleType):
    """This package, callable: ``synthgen.export(...)`` is :func:`synthgen.api.export` (the
    package and the API function share the name, so the package is made callable)."""

    def __call__(self, *args, **kwargs):
        from synthgen import api

        return api.export(*args, **kwargs)


sys.modules[__name__].__class__ = _Stage
