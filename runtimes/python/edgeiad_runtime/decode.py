"""Strict image-file decoding: size from the header before any pixel is decoded, damaged files refused.

Decoders are lenient: a truncated or byte-damaged JPEG comes back as a complete-looking image (libjpeg
only warns), and a small PNG that claims 16384x16384 pixels is decoded before any size check could run.
Here the format and size are read from the header first, a JPEG must end after its scan, JPEGs are
decoded by libjpeg-turbo with its warnings as errors (simplejpeg, strict) and the other formats by Pillow,
which refuses truncated data. The result is laid out as OpenCV's IMREAD_UNCHANGED would give it (BGR[A]
or gray), so callers that treat frames as OpenCV's work unchanged, without OpenCV installed.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError, DataNotFoundError

FORMATS = "PNG, JPEG, BMP or TIFF"
MAX_SIDE = 16384  # larger frames are refused instead of exhausting appliance memory
DEFAULT_MAX_PIXELS = 8192 * 8192  # ~67 MP: about 1 GB of decoded pixels and float maps per prediction
MAX_PIXELS_ENV = "EDGEIAD_MAX_PIXELS"
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def max_pixels_default() -> int:
    """The pixel cap for decoded files: $EDGEIAD_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    text = os.environ.get(MAX_PIXELS_ENV)
    if text is None:
        return DEFAULT_MAX_PIXELS
    if not text.strip().isdigit() or int(text) < 4:
        raise ConfigError(f"{MAX_PIXELS_ENV}={text!r} is invalid: set a pixel count such as 67108864, or unset it")
    return int(text)


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(f"cannot read image {path}: {why}; replace or remove it")


def decode_image_file(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file as an IMREAD_UNCHANGED-style array (BGR[A] or gray), refusing oversized or damaged files."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"image not found: {path} (check the path)")
    limit = max_pixels_default() if max_pixels is None else max_pixels
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max(64 << 20, 8 * limit):
                raise _corrupt(path, f"the file is {size} bytes, too large for a {limit}-pixel image")
            data = handle.read()
    except PermissionError:
        raise DataError(f"cannot read image {path}: permission denied; make it readable by this user") from None
    except OSError as exc:
        raise _corrupt(path, f"the file cannot be read ({exc.strerror or exc})") from None
    kind, width, height, scan_end = _header(path, data)
    if width < 1 or height < 1:
        raise _corrupt(path, f"its {kind} header says {width}x{height} pixels")
    if max(width, height) > MAX_SIDE or width * height > limit:
        raise DataError(
            f"image {path} is {height}x{width} pixels ({kind} header): larger than {MAX_SIDE} per side or "
            f"{limit} pixels; downscale it or raise {MAX_PIXELS_ENV}"
        )
    if kind == "JPEG" and data.rfind(b"\xff\xd9") < scan_end:
        raise _corrupt(path, "the JPEG is truncated (no end-of-image marker after its scan)")
    image, problem = _decode_jpeg(data) if kind == "JPEG" else _decode_pillow(data)
    if problem:
        raise _corrupt(path, f"the {kind} is damaged ({problem})")
    if image is None or image.size == 0:
        raise _corrupt(path, f"the {kind} data is corrupt or truncated")
    if image.shape[:2] not in ((height, width), (width, height)):  # EXIF orientation may swap the sides
        decoded = f"{image.shape[1]}x{image.shape[0]}"
        raise _corrupt(path, f"the {kind} decodes to {decoded} pixels, its header says {width}x{height}")
    return image


def _header(path: Path, data: bytes) -> tuple[str, int, int, int]:
    """(format, width, height, offset of the JPEG scan) from the file's first bytes, or a DataError."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return "PNG", width, height, 0
        if data.startswith(b"\xff\xd8"):
            return _jpeg_header(data)
        if data.startswith(b"BM"):
            if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 bitmap header: 16-bit sizes
                width, height = struct.unpack("<HH", data[18:22])
            else:
                width, height = struct.unpack("<ii", data[18:26])
            return "BMP", width, abs(height), 0
        if data[:4] in (b"II*\0", b"MM\0*"):
            return _tiff_header(data)
    except (struct.error, IndexError):
        raise _corrupt(path, "the header is truncated") from None
    except ValueError as exc:
        raise _corrupt(path, str(exc)) from None
    raise _corrupt(path, f"the file is corrupt or not an image (expected {FORMATS})")


def _jpeg_header(data: bytes) -> tuple[str, int, int, int]:
    position, size = 2, None
    while position < len(data):
        while data[position] == 0xFF and data[position + 1] == 0xFF:  # fill bytes before a marker
            position += 1
        if data[position] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {position}")
        marker = data[position + 1]
        position += 2
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan
            if size is None:
                raise ValueError("the JPEG has no frame header before its scan")
            return "JPEG", size[1], size[0], position
        (length,) = struct.unpack(">H", data[position : position + 2])
        if length < 2:
            raise ValueError(f"a JPEG segment at byte {position} has length {length}")
        if marker in _SOF:
            size = struct.unpack(">HH", data[position + 3 : position + 7])
        position += length
    raise ValueError("the JPEG is truncated before its scan")


def _tiff_header(data: bytes) -> tuple[str, int, int, int]:
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    sizes = {}
    for entry in range(count):
        tag, kind, _, value = struct.unpack(order + "HHI4s", data[offset + 2 + 12 * entry : offset + 14 + 12 * entry])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG, stored left-justified in the value field
            sizes[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[: 2 if kind == 3 else 4])[0]
    if len(sizes) != 2:
        raise ValueError("the TIFF has no ImageWidth/ImageLength")
    return "TIFF", sizes[256], sizes[257], 0


def _decode_jpeg(data: bytes) -> tuple[np.ndarray | None, str]:
    """libjpeg-turbo with warnings as errors (a damaged scan is refused, not returned half grey)."""
    import simplejpeg

    try:
        header = simplejpeg.decode_jpeg_header(data)
        gray = header[2] == "Gray"
        image = simplejpeg.decode_jpeg(data, colorspace="GRAY" if gray else "BGR", strict=True)
    except (ValueError, RuntimeError) as exc:  # simplejpeg reports libjpeg's errors and warnings as ValueError
        return None, str(exc).strip().splitlines()[0] if str(exc).strip() else "libjpeg error"
    return (image[:, :, 0] if gray else image), ""


def _decode_pillow(data: bytes) -> tuple[np.ndarray | None, str]:
    """PNG, BMP, TIFF through Pillow; palettes expanded; channels reordered to OpenCV's BGR[A]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()  # truncated data raises here (Pillow does not pad it unless told to)
            image = opened
            if image.mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif image.mode in ("1", "LA", "PA", "CMYK", "YCbCr", "HSV", "LAB"):
                image = image.convert("RGBA" if image.mode in ("LA", "PA") else "RGB")
            pixels = np.asarray(image)
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        return None, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        pixels = np.ascontiguousarray(pixels[:, :, [2, 1, 0, 3][: pixels.shape[2]]])
    return pixels, ""
