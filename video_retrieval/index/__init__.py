"""The searchable index: its files on disk (manifest, shards, journal, lock), the build pipeline
(reader -> mapper -> writer), distributed indexing, repair, the ANN over pooled vectors and its
measured recall, two-stage search with the rerankers, and retrieval evaluation of an index.

``api.Index`` is the facade on top; ``store`` (an opened generation) and ``files`` (the layout)
never import the writers (``build``, ``repair``) or the searchers (``search``).

Layer: beside ``moments`` (neither imports the other); may import ``models`` and everything
below it.
"""
