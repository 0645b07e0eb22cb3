"""Files in and out: decoding videos (decord, with PyAV as the fallback and for exact
timestamps), writing them (ffmpeg-python with the ``imageio-ffmpeg`` binary), atomic writes of
any file (``atomic``), finding video files, uint8 resizing.

Layer: the lowest package. May import only the bottom modules (``errors``, ``limits``,
``schemas``) and third-party libraries; every other package may import it.
"""
