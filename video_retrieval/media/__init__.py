"""Video files in and out: decoding (decord, with PyAV as the fallback and for exact timestamps),
writing (ffmpeg-python with the ``imageio-ffmpeg`` binary), finding video files, uint8 resizing.

Layer: the lowest of the package. May import only ``video_retrieval.errors`` and
``video_retrieval.atomic`` (and third-party libraries); every other package may import it.
"""
