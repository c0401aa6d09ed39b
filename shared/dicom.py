"""DICOM radiographs as radiology software displays them: stored values through the Modality LUT (rescale slope and
intercept, or a Modality LUT Sequence), then the VOI transform (the first window of Window Center / Width, with its
VOI LUT Function, or a VOI LUT Sequence), MONOCHROME1 inverted. An image with no VOI transform is shown from its
minimum to its maximum. PS3.3 C.11.1 and C.11.2.

Deflated transfer syntax: pydicom inflates the whole dataset before anything can look at it, so `check_inflated_size`
inflates it first, a chunk at a time without keeping the output, and refuses a file that inflates past `limit` bytes
(a few KB can inflate to GBs).
"""

from __future__ import annotations

import zlib

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from shared.images import MAX_IMAGE_PIXELS

DEFLATED_TRANSFER_SYNTAX = b"1.2.840.10008.1.2.1.99"
# The largest image we decode (MAX_IMAGE_PIXELS, 2 bytes each) and its header: more can only be a bomb.
MAX_INFLATED_BYTES = 2 * MAX_IMAGE_PIXELS + (1 << 20)
_PREAMBLE, _MAGIC = 128, b"DICM"
_INFLATE_CHUNK = 1 << 20
_GROUP_LENGTH = b"\x02\x00\x00\x00UL"  # (0002,0000) File Meta Information Group Length, explicit VR little endian


class DicomError(ValueError):
    """A DICOM file this module refuses, with the reason."""


def check_inflated_size(body: bytes, limit: int = MAX_INFLATED_BYTES) -> None:
    """Refuse a deflated-transfer-syntax file whose dataset inflates past `limit` bytes, inflating at most that much
    (in 1 MiB pieces, none kept).
    Files in any other transfer syntax (or with no standard file meta header) pass unchanged."""
    start = _PREAMBLE + len(_MAGIC)
    if body[_PREAMBLE:start] != _MAGIC or body[start : start + 6] != _GROUP_LENGTH:
        return
    meta_end = start + 12 + int.from_bytes(body[start + 8 : start + 12], "little")
    if DEFLATED_TRANSFER_SYNTAX not in body[start:meta_end]:
        return
    inflater, pending, inflated = zlib.decompressobj(-zlib.MAX_WBITS), body[meta_end:], 0
    try:
        while pending and not inflater.eof:  # 1 MiB at a time, counted and dropped: memory stays small
            inflated += len(inflater.decompress(pending, _INFLATE_CHUNK))
            pending = inflater.unconsumed_tail
            if inflated > limit:
                raise DicomError(f"DICOM file inflates past {limit} bytes (decompression bomb?)")
    except zlib.error as exc:
        raise DicomError(f"truncated or corrupt DICOM file: its deflated dataset does not inflate: {exc}") from exc


def _first(value: object) -> float:
    """The first of a multi-valued element (Window Center / Width may hold several windows)."""
    return float(value[0]) if isinstance(value, MultiValue | list | tuple) else float(value)


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """The VOI window (PS3.3 C.11.2.1.2) of modality values, as display values in [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise DicomError(f"DICOM window width must be > 0 for LINEAR_EXACT, got {width}")
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if function != "LINEAR":
        raise DicomError(f"unknown VOI LUT Function {function!r} (expected LINEAR, LINEAR_EXACT or SIGMOID)")
    if width < 1:
        raise DicomError(f"DICOM window width must be >= 1, got {width}")
    if width == 1:  # a threshold at the center
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def lookup(values: np.ndarray, lut: Dataset) -> np.ndarray:
    """A VOI LUT (PS3.3 C.11.2.1.1) applied to modality values, as display values in [0, 1]: values below the first
    mapped one take the first entry, those past the last the last."""
    entries, first_mapped, bits = (int(number) for number in lut.LUTDescriptor)
    data = lut.LUTData
    table = np.frombuffer(data, dtype="<u2") if isinstance(data, bytes) else np.asarray(data, dtype=np.float64)
    entries = entries or 65536  # 0 means 2^16 entries
    if len(table) < entries or not 8 <= bits <= 16:
        raise DicomError(f"inconsistent VOI LUT: descriptor {list(lut.LUTDescriptor)}, {len(table)} entries")
    index = np.clip(np.rint(values) - first_mapped, 0, entries - 1).astype(np.int64)
    return table[index].astype(np.float64) / (2**bits - 1)


def display_values(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """One frame of stored pixel values -> what a viewer shows, in [0, 1] (0 black)."""
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if "VOILUTSequence" in ds:
        shown = lookup(values, ds.VOILUTSequence[0])
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        shown = window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
    else:
        low, high = values.min(), values.max()
        shown = (values - low) / (high - low) if high > low else np.zeros_like(values)
    shown = np.clip(shown, 0.0, 1.0)
    return 1.0 - shown if ds.get("PhotometricInterpretation") == "MONOCHROME1" else shown
