"""One image file's bytes -> a (32, 32, 3) uint8 RGB array, for every Pillow mode, or refused.

The rules (Pillow decodes; these decide what its modes mean as 8-bit RGB):

- 1, L, P, RGB, RGBX, CMYK, YCbCr, LAB, HSV: Pillow's own conversion to RGB (grey is
  replicated; CMYK, YCbCr, LAB and HSV are converted to RGB; no ICC colour management).
- 16-bit grey (I;16, I;16L, I;16B, I;16N, and mode I from PGM/PPM files, which Pillow scales
  to 0..65535): each sample keeps its high byte (v >> 8), the rule Pillow itself applies to
  16-bit RGB files. Never clipped at 255 (clipping turned ordinary 16-bit images all white).
- Alpha (LA, La, PA, RGBA, RGBa, and P, L or RGB with a transparency key): composited over
  black, i.e. each channel becomes round(colour * alpha / 255); an opaque image is unchanged.
- I (32-bit integers, other than from PGM/PPM) and F (floats): refused, since they have no
  defined 8-bit range. Any other mode Pillow cannot convert: refused.
- Multi-frame files (GIF, TIFF): the first frame. EXIF orientation is applied, so the array
  is the image as a viewer shows it.
- The size must be 32x32 (checked before the pixels are decoded).

Every refusal is a `DataError` naming the file and the reason (one line, exit 2 at the CLI).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cifarnet.errors import DataError

IMAGE_SIZE = 32
SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
PPM_FORMATS = frozenset({"PPM"})  # Pillow's PGM/PPM reader gives 16-bit samples as mode I
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
DIRECT = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})


def decode_bytes(data: bytes, path: str | Path) -> np.ndarray:
    """The image in `data` (the bytes of `path`) as (32, 32, 3) uint8 RGB.

    Raises DataError naming `path` if the bytes are not an image Pillow can read, the image
    is not 32x32, or its mode has no defined 8-bit RGB meaning (see the module rules).
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DataError(f"{path}: image is {im.size[0]}x{im.size[1]}, expected "
                                f"{IMAGE_SIZE}x{IMAGE_SIZE}")
            im.load()
            fmt = im.format
            arr = to_rgb8(ImageOps.exif_transpose(im), path, fmt)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001  Pillow's plugins raise OSError, SyntaxError,
        # ValueError, struct.error, DecompressionBombError...: all mean "not a usable image"
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None
    if arr.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise DataError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]} after decoding, "
                        f"expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    return arr


def to_rgb8(im, path: str | Path, fmt: str | None) -> np.ndarray:
    """A loaded PIL image (read from a file of Pillow format `fmt`) as (H, W, 3) uint8 RGB by
    the module rules; DataError naming `path` if refused."""
    mode = im.mode
    if mode in SIXTEEN_BIT or (mode == "I" and fmt in PPM_FORMATS):
        grey = np.asarray(im).astype(np.int64)
        if grey.min() < 0 or grey.max() > 0xFFFF:
            raise DataError(f"{path}: mode {mode} values outside 0..65535")
        return np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, axis=2)
    if mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "floating-point"
        raise DataError(f"{path}: mode {mode} ({kind}) images have no defined 8-bit range; "
                        "convert the file to 8-bit or 16-bit")
    if mode in ALPHA_MODES or "transparency" in im.info:
        if mode == "La":
            im = im.convert("LA")
        rgba = np.asarray(im.convert("RGBA")).astype(np.uint32)
        alpha = rgba[..., 3:]
        return ((rgba[..., :3] * alpha + 127) // 255).astype(np.uint8)
    if mode in DIRECT:
        return np.asarray(im.convert("RGB"))
    raise DataError(f"{path}: image mode {mode} is not supported; convert the file to RGB")
