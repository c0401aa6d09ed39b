"""Image and file I/O with clear errors: decode fully or fail naming the file; write atomically."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.errors import DatasetError

# The most pixels an image may have (decompression bombs are refused before they are decoded). Chest radiographs are
# at most about 4300 x 4300 (a 43 x 43 cm detector at 100 um), most far smaller; 4608 x 4608 (21.2 M) admits those
# and nothing much larger. Decoding costs far more than the pixels: a 16-bit DICOM goes through float64 on its way
# to 8 bits, about 27 bytes a pixel at the peak (~570 MB at this limit; 64 M pixels, the limit before, peaked near
# 2.9 GB), so this limit is what bounds a decode's memory. The v2 runtime takes it as PNEUMONIA_OIP_MAX_IMAGE_PIXELS;
# TorchServe's handler runs in TorchServe's worker processes, which read no settings of ours, and uses this value.
MAX_IMAGE_PIXELS = 4608 * 4608
# The most bytes one pixel may take once decoded: 8-bit RGB(A) as PIL keeps it (4); a 16-bit grey radiograph takes
# 2. Samples per pixel and bits allocated count (shared.serving.predictor.check_pixel_count): an image whose pixels
# take more, e.g. 16-bit RGB or 64-bit floats, may have correspondingly fewer pixels.
MAX_BYTES_PER_PIXEL = 4
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def load_grayscale(path: str | Path) -> Image.Image:
    """Decode an image file completely and return it in mode 'L'; raise DatasetError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # force a full decode so truncated files fail here, not later
            return img.convert("L")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"corrupt or unreadable image: {path} ({exc})") from exc


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # os.open with 0o666 lets the umask decide the mode, as for any new file (mkstemp would force 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: object) -> None:
    """Write `data` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Save a uint8 array, H x W (grayscale) or H x W x 3 (RGB), as a PNG, atomically."""
    import io

    if array.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8, got {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
