"""The one-call Python API, in rembg's spirit: `remove(photo)` -> cutout.

Sessions are cached per model so that calling `remove` in a loop loads the model once.
"""
from __future__ import annotations

import copy
import math
import os
import threading
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from . import composite
from .errors import EdgecutError
from .imageio import load_image, load_photo
from .session import Session

__all__ = ["remove", "compositor", "get_session"]

_SESSIONS: dict = {}
_LOCK = threading.Lock()

Render = Callable[[Image.Image, np.ndarray], Image.Image]


def get_session(model="default", **kw) -> Session:
    """The cached Session for a model (name or path), created on first use."""
    key = (str(model), tuple(sorted(kw.items())))
    with _LOCK:
        if key not in _SESSIONS:
            _SESSIONS[key] = Session(model, **kw)
        return _SESSIONS[key]


MAX_BLUR_RADIUS = 1000


def _blur_radius(spec: str) -> Optional[float]:
    _, _, value = spec.partition(":")
    if not value:
        return None
    try:
        radius = float(value)
    except ValueError:
        radius = math.nan
    # Pillow's and OpenCV's blurs allocate kernels by the radius: nan, negatives and huge values
    # fail inside them (or hang), so the range is checked here.
    if not 0 <= radius <= MAX_BLUR_RADIUS:
        raise EdgecutError(f"bad blur radius in {spec!r} (use blur or blur:RADIUS, "
                           f"RADIUS from 0 to {MAX_BLUR_RADIUS} pixels)")
    return radius


def compositor(mask: bool = False, bg=None) -> Render:
    """What to make of (photo, alpha): RGBA cutout, L mask, or RGB on a colour/image/blur.

    `bg` is a colour ('white', '#00ff00', (r, g, b)), 'blur' or 'blur:RADIUS', or an image
    (path, PIL image, array). A background image is loaded once here, not per photo.
    """
    if mask and bg is not None:
        raise EdgecutError("choose either a mask or a background, not both")
    if mask:
        return lambda photo, alpha: composite.to_mask(alpha)
    if bg is None:
        return composite.to_rgba
    if isinstance(bg, str) and (bg == "blur" or bg.startswith("blur:")):
        radius = _blur_radius(bg)
        return lambda photo, alpha: composite.onto_blur(photo, alpha, radius)
    if isinstance(bg, (tuple, list)):
        color = composite.parse_color(bg)
        return lambda photo, alpha: composite.onto_color(photo, alpha, color)
    if isinstance(bg, str):
        try:
            color = composite.parse_color(bg)
            return lambda photo, alpha: composite.onto_color(photo, alpha, color)
        except EdgecutError:
            if not Path(bg).expanduser().exists():
                raise EdgecutError(f"background {bg!r} is not a colour, 'blur', or an image file") from None
    if isinstance(bg, (str, os.PathLike)):
        bg = Path(bg).expanduser()
    image = load_image(bg)
    return lambda photo, alpha: composite.onto_image(photo, alpha, image)


def remove(image, session: Optional[Session] = None, *, mask: bool = False, bg=None,
           refine: bool = True, model="default", tta: bool = False) -> Image.Image:
    """Cut the subject out of a photo.

    image: a path, bytes, file object, PIL image or numpy array.
    Returns an RGBA cutout (soft alpha); with mask=True the L alpha; with bg an RGB composite.
    tta=True averages the photo's pass with its mirror image's: twice the
    inference time, a cleaner matte (see Session).
    """
    render = compositor(mask, bg)
    if isinstance(session, (str, os.PathLike)):      # remove(img, session="edgecut-fast"): a model name
        session = get_session(session, tta=True) if tta else get_session(session)
    elif session is not None and not isinstance(session, Session):
        raise TypeError(f"session must be an edgecut Session or a model name, got {type(session).__name__}")
    elif tta and session is not None and not session.tta:   # the caller's session, with its model loaded once
        session = copy.copy(session)
        session.tta = True
    session = session or (get_session(model, tta=True) if tta else get_session(model))
    photo, own = load_photo(image)
    return render(photo, composite.within(session.alpha(photo, refine=refine), own))
