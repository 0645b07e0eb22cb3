"""Model weights and checkpoints: which weights a command uses (open_clip tags, local files, the
bundled demo assets), reading checkpoints safely (``torch.load(weights_only=True)``, class paths
checked against an allow-list, old dotted paths mapped to today's), loading a retrieval model
without Lightning, and slimming checkpoints for inference.

Layer: above ``encoders``, ``temporal``, ``metrics``, ``datasets`` and ``media``; below
``train``, ``index`` and ``moments``, which it never imports (class paths are strings here).
"""
