"""The lean runtime: numpy + onnxruntime + Pillow, never torch.

    >>> from edgecut.runtime import remove, new_session
    >>> session = new_session()                 # load once
    >>> remove("photo.jpg", session).save("cutout.png")

Exports load on first use, so `edgecut --help` and `import edgecut.runtime.errors` stay instant.
"""
from importlib import import_module

_EXPORTS = {
    "Session": "session", "new_session": "session",
    "remove": "api", "compositor": "api", "get_session": "api",
    "load_image": "imageio", "load_rgb": "imageio", "save_image_atomic": "imageio",
    "Manifest": "manifest", "EdgecutError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
