"""The object bank, in one place: the cut-outs render writes and compose pastes.

- :mod:`.format`    the files of a bank and the record of one object (``index.jsonl``)
- :mod:`.reader`    :class:`~.reader.ObjectBank`: a synthgen bank, a ``<category>/*.png`` tree or
                    X-Paste pools, local or on an object store; cut-outs decoded on demand
- :mod:`.names`     categories read from file and folder names: a folder of banks refused, names
                    that look like file names warned about, ``--categories-map`` renaming them
- :mod:`.writer`    :class:`~.writer.BankWriter`: render's writer (resumable, atomic)
- :mod:`.preview`   the contact sheet of a bank (``synthgen preview BANK``)
- :mod:`.prepared`  a prepared bank (``synthgen prepare-objects``): every cut-out decoded once,
                    raw pixels in shards and an index, read back with one positioned read
"""
