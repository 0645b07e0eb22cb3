"""Moment localization: per-clip features (and their cache), the motion stream, the trained-head
predictor, the zero-shot baseline, ``localize()``, its plot, and moment evaluation from files.

Layer: beside ``index`` (neither imports the other); may import ``models`` and everything below
it.
"""
