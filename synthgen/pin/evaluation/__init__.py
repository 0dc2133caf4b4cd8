"""Evaluation (``synthgen eval-pin``, ``synthgen predict``) of a trained run.

- :mod:`.protocol`    the protocol's maths (pure): answer parsing, boxes on the canvas, size
                      buckets, baselines, metrics; the authors' rules by default
- :mod:`.sets`        COCO-format sets, PASCAL VOC and RefCOCO read into queries (no torch)
- :mod:`.evaluate`    scoring a run (or a baseline) on a set or on scene shards
- :mod:`.predict`     one image, one text
"""
