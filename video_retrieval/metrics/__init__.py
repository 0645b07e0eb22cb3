"""Evaluation metrics as pure functions over arrays: retrieval (R@K, MdR, MnR, the temporal-pair
accuracy) and moment retrieval (QVHighlights mAP / R1@IoU / HIT@1, the DiDeMo and Charades-STA
protocols).

Layer: beside ``encoders``, ``temporal`` and ``datasets``; imports only numpy and
``video_retrieval.errors`` (no torch, no files). Reading prediction and annotation files is
``video_retrieval.moments.evaluate``'s job.
"""
