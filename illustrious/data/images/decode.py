"""One image file -> the RGB pixels of one bucket-sized training sample, with Pillow.

Header reads never decode pixels (for scanning millions of files); decoding honours EXIF orientation,
flattens transparency onto white, converts CMYK, palette, 1-bit, 16-bit and float modes to 8-bit RGB,
refuses decompression bombs, and resizes with Lanczos straight to the crop (JPEGs are first decoded at a
reduced DCT scale when the target is much smaller, which is most of the speed on large photos).
Every failure is an `ImageError` whose `reason` names the kind of problem for the reports.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageFile

from illustrious.data.images.buckets import CropPlan

ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the image upright (as PIL.ImageOps.exif_transpose does).
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_AXES = {5, 6, 7, 8}
WHITE = (255, 255, 255, 255)
# Pillow opens these, but they are not pictures to train on (video, PostScript).
NOT_PICTURES = {"MPEG", "EPS"}

Source = str | os.PathLike | bytes


class ImageError(Exception):
    """An image that cannot become a sample; `reason` is a report category."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def image_extensions() -> frozenset[str]:
    """File extensions of every raster format this Pillow can decode (stub plugins excluded)."""
    Image.init()
    formats = {name for name, (factory, _) in Image.OPEN.items()
               if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))}
    formats -= NOT_PICTURES
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in formats)


@dataclass(frozen=True)
class Header:
    width: int  # upright, after EXIF orientation
    height: int
    orientation: int  # EXIF orientation 1..8 (1 = as stored)
    format: str
    mode: str


def open_image(source: Source, bomb_pixels: int | None) -> Image.Image:
    """Open without decoding; refuse files whose header claims more than `bomb_pixels` pixels (None: only
    Pillow's own limit, for scans, whose manifests must not depend on a setting)."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
            image = Image.open(stream)
    except Image.DecompressionBombError as e:
        raise ImageError("decompression_bomb", str(e)) from None
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError) as e:
        # Pillow raises UnidentifiedImageError (an OSError) for unknown or empty files, and assorted
        # errors for headers that are corrupt in ways its parsers did not anticipate.
        raise ImageError("unreadable_image", f"{type(e).__name__}: {e}") from None
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise ImageError("unreadable_image", f"header says {width}x{height} pixels")
    if bomb_pixels is not None and width * height > bomb_pixels:
        image.close()
        raise ImageError("decompression_bomb", f"{width}x{height} pixels is more than the limit of {bomb_pixels} "
                         "(data.bomb_megapixels)")
    return image


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation from the header (1 if none), without decoding pixels."""
    raw = image.info.get("exif")
    try:
        if raw:
            exif = Image.Exif()
            exif.load(raw)
        elif image.format in ("TIFF", "MPO"):  # EXIF lives in the header's tags
            exif = image.getexif()
        else:
            return 1
        value = int(exif.get(ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not lose the picture: treat it as upright
        return 1
    return value if value in range(1, 9) else 1


def read_header(source: Source, bomb_pixels: int | None = None) -> Header:
    image = open_image(source, bomb_pixels)
    with image:
        orientation = exif_orientation(image)
        width, height = image.size
        if orientation in SWAPS_AXES:
            width, height = height, width
        return Header(width, height, orientation, image.format or "", image.mode)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: alpha flattened onto white, CMYK through its ICC profile when it has one."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "CMYK":
        icc = image.info.get("icc_profile")
        if icc:
            try:
                source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
            except (ImageCms.PyCMSError, OSError, ValueError):
                pass  # an unusable profile: the plain conversion below is still a faithful picture
        return image.convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_8bit(image), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    return image.convert("RGB")  # L, P, 1, YCbCr, LAB, HSV, ...


def _to_8bit(image: Image.Image) -> np.ndarray:
    values = np.asarray(image)
    if image.mode == "F":
        values = values * 255.0 if values.size and float(np.nanmax(values)) <= 1.0 else values
        return np.clip(np.nan_to_num(values), 0, 255).astype(np.uint8)
    return np.clip(values.astype(np.int64) >> 8, 0, 255).astype(np.uint8)  # 16-bit range -> 8-bit


def upright_size(image: Image.Image, orientation: int) -> tuple[int, int]:
    w, h = image.size
    return (h, w) if orientation in SWAPS_AXES else (w, h)


def decode(image: Image.Image, orientation: int, at_least: tuple[int, int] | None = None) -> Image.Image:
    """Decode pixels (at a reduced JPEG scale if `at_least` (w, h), upright, allows), upright, in RGB."""
    try:
        if at_least is not None and image.format == "JPEG":
            w, h = at_least
            image.draft("RGB", (h, w) if orientation in SWAPS_AXES else (w, h))
        image.load()
    except Image.DecompressionBombError as e:
        raise ImageError("decompression_bomb", str(e)) from None
    except Exception as e:  # truncated data, bad Huffman tables, zlib errors, ...: all mean "cannot decode"
        raise ImageError("decode_failed", f"{type(e).__name__}: {e}") from None
    if orientation in TRANSPOSE:
        image = image.transpose(TRANSPOSE[orientation])
    try:
        return to_rgb(image)
    except Exception as e:
        raise ImageError("decode_failed", f"cannot convert mode {image.mode} to RGB: {e}") from None


def crop_to_bucket(image: Image.Image, plan: CropPlan) -> np.ndarray:
    """Resample only the region the crop keeps (Lanczos), straight to the bucket size; (H, W, 3) uint8."""
    fx, fy = image.width / plan.resize_width, image.height / plan.resize_height
    box = (plan.left * fx, plan.top * fy, (plan.left + plan.width) * fx, (plan.top + plan.height) * fy)
    out = image.resize((plan.width, plan.height), Image.Resampling.LANCZOS, box=box)
    return np.asarray(out, dtype=np.uint8)
