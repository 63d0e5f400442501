"""Getting photos in and results out, safely, whatever users throw at it.

Input: anything Pillow decodes (paths, bytes, streams, PIL images) or a numpy array, turned
upright (EXIF orientation) and into 8-bit RGB, the one thing a model eats (`load_photo` also keeps
the photo's own transparency, for the cutout to keep). Every failure a user
can cause (missing file, empty, truncated, not an image, decompression bomb) becomes one
EdgecutError naming the file. Output: written to a temp file beside the target and renamed,
so a crash never leaves a half-written image, and never over an input.
"""
from __future__ import annotations

import io
import os
import re
import uuid
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import EdgecutError
from .outputs import refuse_special, same_file

__all__ = ["MAX_PIXELS", "load_image", "load_photo", "load_rgb", "transparency", "save_image_atomic",
           "format_for", "to_rgb", "load_mask"]

MAX_PIXELS = 100_000_000   # ~100 MP: larger files are refused before decoding (Pillow's own bomb check is ~179 MP)
_ORIENTATION = 0x0112
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, io.IOBase, Image.Image, np.ndarray]


def reuse_image_memory(blocks: int = 64) -> None:
    """Let Pillow keep up to `blocks` freed 16 MB memory blocks for the next image.

    Why: Pillow hands a freed image's memory back at once, so each 12 MP photo pays again for
    ~100 MB of fresh pages; measured on the RGBA assembly of a 12 MP cutout, 93 ms cold against
    47 ms with reused blocks. The CLI (folders, video, benchmarks) turns it on; a Python user can
    too. Cached plus used blocks never exceed the most the process used at once, so the peak RSS
    does not grow; PILLOW_BLOCKS_MAX, if set, wins.
    """
    if "PILLOW_BLOCKS_MAX" not in os.environ:
        Image.core.set_blocks_max(blocks)


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Integers above 255 are taken as 16-bit, floats up to 1.0 as [0, 1]; everything else is clipped."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and arr.max() > 255:
            return ((np.clip(arr, 0, 65535).astype(np.uint32) + 128) // 257).astype(np.uint8)
        return np.clip(arr, 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return np.clip(arr + 0.5, 0, 255).astype(np.uint8)
    raise EdgecutError(f"unsupported array dtype {arr.dtype}")


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]   # alpha is not model input
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)) or arr.size == 0:
        raise EdgecutError(f"{name}: expected an HxW, HxWx3 or HxWx4 array, got shape {arr.shape}")
    arr = np.ascontiguousarray(_scale_to_uint8(arr))
    im = Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any mode Pillow opens; transparency is dropped (the model sees colour only)."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16"):   # 16-bit by its mode: a dark photo (all levels <= 255) is dark, not 8-bit
        levels = (np.asarray(im).astype(np.uint32) + 128) // 257
        return Image.fromarray(levels.astype(np.uint8), "L").convert("RGB")
    if im.mode.startswith("I") or im.mode == "F":   # I, F: the range is guessed from the values
        return _from_array(np.asarray(im), "image")
    if im.mode == "La":                       # premultiplied: Pillow converts it to LA only
        im = im.convert("LA")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")   # palette transparency must go through RGBA to be read right
    try:
        rgb = im.convert("RGB")
    except ValueError:
        rgb = im.convert("RGBA").convert("RGB")
    if rgb_profile(rgb) is None:
        # A CMYK or grey profile no longer describes these pixels, and Pillow's PNG and JPEG
        # writers copy the image's own profile: the file would be invalid for colour-managed viewers.
        rgb.info.pop("icc_profile", None)
    return rgb


def _upright(im: Image.Image) -> Image.Image:
    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # broken EXIF should not cost the photo
        return im
    return ImageOps.exif_transpose(im) if orientation in (2, 3, 4, 5, 6, 7, 8) else im


def _name_of(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(getattr(src, "name", "<stream>"))


def _open_source(src, name: str):
    """A binary stream Pillow can seek in, checking the failures a path can have first."""
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            if path.is_symlink():
                raise EdgecutError(f"{name}: broken symbolic link (to {os.readlink(path)})")
            raise EdgecutError(f"{name}: no such file")
        if path.is_dir():
            raise EdgecutError(f"{name}: is a directory")
        if not path.is_file():   # a FIFO or device: opening it would wait for a writer forever
            raise EdgecutError(f"{name}: not a regular file (a pipe or device); use - for stdin")
        try:
            f = open(path, "rb")
        except OSError as e:
            raise EdgecutError(f"{name}: cannot read ({e.strerror or e})") from None
        if os.fstat(f.fileno()).st_size == 0:
            f.close()
            raise EdgecutError(f"{name}: empty file")
        return f
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise EdgecutError(f"{name}: empty input")
        return io.BytesIO(src)
    if hasattr(src, "read"):
        if not (getattr(src, "seekable", lambda: False)()):
            data = src.read()   # pipes (stdin): Pillow needs to seek
            if not data:
                raise EdgecutError(f"{name}: empty input")
            return io.BytesIO(data)
        return src
    raise EdgecutError(f"cannot read an image from {type(src).__name__}")


def load_image(src: ImageSource, *, max_pixels: Optional[int] = MAX_PIXELS) -> Image.Image:
    """Any image source -> upright 8-bit RGB PIL image (see module doc for what is accepted)."""
    if isinstance(src, np.ndarray):
        return _from_array(src, "<array>")
    return to_rgb(_decode(src, max_pixels))


def load_photo(src: ImageSource, *, max_pixels: Optional[int] = MAX_PIXELS):
    """-> (load_image's RGB, the source's own transparency as an L image, or None where it has none
    or is opaque everywhere). A sticker, a logo or an earlier cutout keeps its transparent parts
    transparent in our cutout: the model sees colour only and would fill them in."""
    if isinstance(src, np.ndarray):
        arr = np.asarray(src)
        own = None
        if arr.ndim == 3 and arr.shape[2] == 4 and arr.size:
            a = np.ascontiguousarray(_scale_to_uint8(arr[..., 3]))
            own = Image.fromarray(a, "L") if a.min() < 255 else None
        return _from_array(arr, "<array>"), own
    im = _decode(src, max_pixels)
    return to_rgb(im), transparency(im)


def transparency(im: Image.Image) -> Optional[Image.Image]:
    """An image's alpha (its alpha band, or a palette's or colour key's transparency) as L; None
    when it has none or every pixel is opaque."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = im.getchannel(len(im.getbands()) - 1)
    elif "transparency" in im.info and im.mode in ("P", "L", "RGB", "1"):
        alpha = im.convert("RGBA").getchannel(3)
    elif isinstance(im.info.get("transparency"), int) and im.mode.startswith("I"):
        # a 16-bit grey PNG's transparent level, which Pillow's conversions drop
        key = np.asarray(im) == im.info["transparency"]
        alpha = Image.fromarray(np.where(key, 0, 255).astype(np.uint8), "L")
    else:
        return None
    return None if alpha.getextrema()[0] == 255 else alpha


def _decode(src: ImageSource, max_pixels: Optional[int]) -> Image.Image:
    """Any image source but an array -> the upright, loaded PIL image in its own mode."""
    if isinstance(src, Image.Image):
        return _upright(src)
    name = _name_of(src)
    f = _open_source(src, name)
    owned = f is not src
    try:
        try:
            im = Image.open(f)
        except UnidentifiedImageError:
            raise EdgecutError(f"{name}: not an image (or a format Pillow cannot read)") from None
        except Image.DecompressionBombError as e:
            m = _BOMB_PIXELS.search(str(e))
            n = m.group(1) if m else "too many"
            limit = max_pixels or 2 * Image.MAX_IMAGE_PIXELS
            raise EdgecutError(f"{name}: image too large: {n} pixels (limit {limit})") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise EdgecutError(f"{name}: corrupt image header ({e})") from None
        # No `with im`: closing an image discards its pixels; the stream is closed below instead.
        w, h = im.size
        if max_pixels and w * h > max_pixels:
            raise EdgecutError(f"{name}: image too large: {w * h} pixels (limit {max_pixels})")
        try:
            im.load()
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
            raise EdgecutError(f"{name}: truncated or corrupt image ({e})") from None
        return _upright(im)
    finally:
        if owned:
            f.close()


def load_mask(path: Union[str, os.PathLike]) -> np.ndarray:
    """A 0/255 (128 = ignore) uint8 mask from the ways other data sets store one: 16-bit PNGs
    (0..65535), label maps of 0/1, cut-outs whose alpha channel is the mask, and colour masks
    (white or a colour on black). Read as plain grey levels, the last three score as empty or
    all-background masks without a word."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16L", "I;16B", "I"):
            a = np.asarray(im).astype(np.float64)
            m = np.round(a / 257.0).astype(np.uint8) if a.max() > 255 else np.clip(a, 0, 255).astype(np.uint8)
        elif "A" in im.getbands() and im.getchannel("A").getextrema()[0] < 255:
            m = np.asarray(im.getchannel("A"))
        elif im.mode in ("RGB", "RGBA"):
            # the brightest channel: a red-on-black mask is 76 in luma and scored as all background;
            # a grey one (and its 128 band) reads the same either way
            m = np.asarray(im.convert("RGB")).max(axis=2)
        else:
            m = np.asarray(im.convert("L"))
    if m.max() == 1:                                  # a 0/1 label map
        m = m * np.uint8(255)
    return m


def load_rgb(src: ImageSource, **kw) -> np.ndarray:
    """load_image as a writable HxWx3 uint8 array."""
    return np.array(load_image(src, **kw))


def format_for(path: Union[str, os.PathLike], default: str = "PNG") -> str:
    """Pillow format name from a file extension (`.jpg` -> JPEG); unknown ones are an error."""
    ext = Path(path).suffix.lower()
    if not ext:
        return default
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise EdgecutError(f"{path}: cannot write {ext} files (use .png, .webp or .jpg)")
    return fmt


def write_text_atomic(path: Union[str, os.PathLike], text: str) -> Path:
    """Write text via a temp file beside it + os.replace: a reader sees the old file or the new
    one, never half of it (manifests, model cards, benchmark JSON and tables)."""
    path = refuse_special(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise EdgecutError(f"{path}: cannot write ({e.strerror or e})") from None
    return path


MAX_SIDE = {"WEBP": 16383, "JPEG": 65500}    # what the encoders can hold, per side


def check_fits(img: Image.Image, fmt: str, name) -> None:
    """A tall screenshot in WebP: one line before encoding, not the encoder's ValueError."""
    limit = MAX_SIDE.get(fmt.upper())
    if limit and max(img.size) > limit:
        raise EdgecutError(f"{name}: {fmt.upper()} holds at most {limit} pixels a side and this image is "
                           f"{img.width}x{img.height}; write .png")


def rgb_profile(im: Image.Image) -> Optional[bytes]:
    """The image's ICC profile where it describes RGB (e.g. Display P3), else None."""
    icc = im.info.get("icc_profile")
    return icc if isinstance(icc, bytes) and icc[16:20] == b"RGB " else None


def save_image_atomic(img: Image.Image, path: Union[str, os.PathLike], format: Optional[str] = None,
                      *, inputs: Iterable = (), **params) -> Path:
    """Write via a temp file in the same folder + os.replace; refuse to replace any of `inputs`."""
    path = Path(path)
    fmt = (format or format_for(path)).upper()
    check_fits(img, fmt, path)
    if path.exists():
        refuse_special(path)
        for src in inputs:
            if same_file(path, src):
                raise EdgecutError(f"{path}: refusing to overwrite an input")
    if fmt == "JPEG" and img.mode in ("RGBA", "LA", "PA"):
        raise EdgecutError(f"{path}: JPEG cannot hold transparency (write .png/.webp, or use --bg)")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:   # "x": never clobber; the umask sets the final permissions
            img.save(f, format=fmt, **params)
        os.replace(tmp, path)
    except (OSError, ValueError) as e:    # ValueError: an encoder refusing the image
        try:
            tmp.unlink()
        except OSError:
            pass
        raise EdgecutError(f"{path}: cannot write ({getattr(e, 'strerror', None) or e})") from None
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return path
