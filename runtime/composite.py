"""What to do with a matte: a cutout, the mask itself, or the subject on a new background.

All blending is Pillow's integer compositing in C (out = (fg * a + bg * (255 - a)) / 255), so a
12 MP composite costs one pass and no float copy of the photo.
"""
from __future__ import annotations

import numbers

from typing import Optional, Union

import numpy as np
from PIL import Image, ImageChops, ImageColor, ImageFilter, ImageOps

from .errors import EdgecutError

__all__ = ["within", "to_rgba", "to_mask", "onto_color", "onto_image", "onto_blur", "parse_color"]

Photo = Union[Image.Image, np.ndarray]
BLUR_WORK_SIDE = 640   # the background blur runs at this long side, then is stretched back


def _rgb(photo: Photo) -> Image.Image:
    if isinstance(photo, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(photo, dtype=np.uint8), "RGB")
    return photo if photo.mode == "RGB" else photo.convert("RGB")


def to_mask(alpha: Union[np.ndarray, Image.Image]) -> Image.Image:
    if isinstance(alpha, Image.Image):
        return alpha if alpha.mode == "L" else alpha.convert("L")
    return Image.fromarray(np.ascontiguousarray(alpha, dtype=np.uint8), "L")


def _checked(photo: Image.Image, mask: Image.Image) -> None:
    if photo.size != mask.size:
        raise EdgecutError(f"alpha size {mask.size} does not match the photo {photo.size}")


def within(alpha, own: Optional[Image.Image]):
    """The matte inside the photo's own transparency (`imageio.load_photo`): alpha x own / 255, in
    C. What is transparent in the photo stays so in every output; rembg's cutout does the same."""
    if own is None:
        return alpha
    mask = to_mask(alpha)
    _checked(own, mask)
    return ImageChops.multiply(mask, own)


def to_rgba(photo: Photo, alpha, clear_hidden: bool = True) -> Image.Image:
    """The cutout: the photo's colours with the soft alpha as its transparency.

    clear_hidden zeroes the colour under fully transparent pixels: otherwise the "removed"
    background is still in the file for anyone who drops the alpha channel, and PNGs of 12 MP
    cutouts come out ~3x larger and slower to write.
    """
    rgb, mask = _rgb(photo), to_mask(alpha)
    _checked(rgb, mask)
    if not clear_hidden:
        out = rgb.convert("RGBA")   # a new image: the caller's photo is left alone
        out.putalpha(mask)
        return out
    keep = mask.point(lambda v: 255 if v else 0)
    return Image.merge("RGBA", [ImageChops.darker(band, keep) for band in rgb.split()] + [mask])


def parse_color(color) -> tuple:
    """Any Pillow colour ('white', '#0a0', 'rgb(0,128,255)') or an (r, g, b) tuple -> (r, g, b)."""
    if isinstance(color, (tuple, list)):
        if len(color) not in (3, 4) or not all(
                isinstance(c, numbers.Integral) and not isinstance(c, bool) and 0 <= c <= 255 for c in color):
            raise EdgecutError(f"not a colour: {tuple(color)!r} (use (r, g, b), each 0-255)")
        return tuple(int(c) for c in color[:3])
    try:
        return ImageColor.getrgb(str(color))[:3]
    except ValueError:
        raise EdgecutError(f"not a colour: {color!r}") from None


def _over(photo: Image.Image, alpha, background: Image.Image) -> Image.Image:
    mask = to_mask(alpha)
    _checked(photo, mask)
    return Image.composite(photo, background, mask)


def onto_color(photo: Photo, alpha, color="white") -> Image.Image:
    rgb = _rgb(photo)
    return _over(rgb, alpha, Image.new("RGB", rgb.size, parse_color(color)))


def onto_image(photo: Photo, alpha, background: Union[Image.Image, np.ndarray]) -> Image.Image:
    """The background is scaled to cover the photo and centre-cropped (no bars, no distortion)."""
    rgb = _rgb(photo)
    bg = _rgb(background)
    if bg.size != rgb.size:
        bg = ImageOps.fit(bg, rgb.size, Image.BILINEAR)
    return _over(rgb, alpha, bg)


def onto_blur(photo: Photo, alpha, radius: Optional[float] = None) -> Image.Image:
    """Portrait-mode look: the photo itself, blurred, behind the subject.

    The blur runs on a copy shrunk to BLUR_WORK_SIDE: a wide Gaussian is smooth anyway, and at
    12 MP this is ~100x less work than blurring full size. `radius` is in full-res pixels
    (default: 1.5% of the long side).
    """
    rgb = _rgb(photo)
    W, H = rgb.size
    radius = float(radius) if radius is not None else 0.015 * max(W, H)
    s = min(1.0, BLUR_WORK_SIDE / max(W, H))
    small = rgb.resize((max(1, round(W * s)), max(1, round(H * s))), Image.BILINEAR, reducing_gap=2.0)
    small = small.filter(ImageFilter.GaussianBlur(max(0.5, radius * s)))
    return _over(rgb, alpha, small.resize((W, H), Image.BILINEAR))
