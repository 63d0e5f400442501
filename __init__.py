"""edgecut: on-device background removal with a ~1 MB distilled student.

    >>> import edgecut
    >>> rgba = edgecut.remove("photo.jpg")          # PIL.Image, RGBA with soft alpha

The top level stays import-light (numpy, Pillow, onnxruntime load on first use) so that
`edgecut --help` is instant and torch is never imported by the runtime.
"""
__version__ = "0.1.0"

__all__ = ["remove", "new_session", "Session", "__version__"]


def __getattr__(name):
    if name in ("remove", "new_session", "Session"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'edgecut' has no attribute {name!r}")
