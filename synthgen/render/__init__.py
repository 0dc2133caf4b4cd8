"""The render stage: objects from text (the X-Paste recipe) -> an object bank.

- :mod:`.config`       settings, defaults and checks
- :mod:`.categories`   LVIS / COCO / VOC / file category lists; :mod:`.classes` COCO and VOC
- :mod:`.seeds`, :mod:`.filter`   per-object seeds and X-Paste's filter rule (pure)
- :mod:`.generate`, :mod:`.cutout`, :mod:`.score`   the three models (diffusers, rembg, open_clip)
- :mod:`.stages`       the models as batch stages; :mod:`.plan` their actors and resources
- :mod:`.pipeline`     the driver (Ray Data or in-process); :mod:`.records` a finished category
- the bank it writes, and its contact sheet: :mod:`synthgen.bank`; tiny random-weight models
  for tests and the demo: :mod:`synthgen.demo.tiny_render`
"""

import sys
import types


class _Stage(types.ModuleType):
    """This package, callable: ``synthgen.render(...)`` is :func:`synthgen.api.render` (the
    package and the API function share the name, so the package is made callable)."""

    def __call__(self, *args, **kwargs):
        from synthgen import api

        return api.render(*args, **kwargs)


sys.modules[__name__].__class__ = _Stage
