"""Training: the LightningModules (retrieval, moment heads), their DataModules and datasets,
hard-negative pair sampling, and the frozen-feature cache (settings, builder, reader) that
trains aggregators from disk.

Layer: above ``index`` and ``moments`` (a moment DataModule computes clip features with
``moments``); imported only by ``cli`` (``vr train`` names these classes in its configs).
"""
