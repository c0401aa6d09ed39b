"""DICOM radiographs as radiology software displays them: stored values through the Modality LUT (rescale slope and
intercept, or a Modality LUT Sequence), then the VOI transform (the first window of Window Center / Width, with its
VOI LUT Function, or a VOI LUT Sequence), MONOCHROME1 inverted. An image with no VOI transform is shown from its
minimum to its maximum. PS3.3 C.11.1 and C.11.2.

Deflated transfer syntax: pydicom.dcmread inflates the whole dataset at once, unbounded (a few hundred KB can inflate
to GBs), so `read_dicom` reads such a file itself: it finds where the dataset starts with pydicom's own file meta
reader (no group length, a wrong one or elements in any order change nothing), measures the inflated size a chunk at
a time without keeping it, refuses past `limit` bytes, and only then inflates it (bounded again) and parses the
result as dcmread would. Every other file goes to dcmread unchanged: it inflates nothing.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_command_set_elements, _read_file_meta_info, read_dataset, read_preamble
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.uid import DeflatedExplicitVRLittleEndian

from shared.images import MAX_IMAGE_PIXELS

# The largest image we decode (MAX_IMAGE_PIXELS, 2 bytes each) and its header: more can only be a bomb.
MAX_INFLATED_BYTES = 2 * MAX_IMAGE_PIXELS + (1 << 20)
_INFLATE_CHUNK = 1 << 20
_PREAMBLE, _MAGIC = 128, b"DICM"


class DicomError(ValueError):
    """A DICOM file this module refuses, with the reason."""


def _head(body: bytes) -> tuple[bytes | None, FileMetaDataset, Dataset, int]:
    """(preamble, file meta, command set, offset of the dataset) as pydicom.dcmread reads them, by the same calls
    (read_partial's): the offset is where dcmread starts to inflate a deflated dataset, whatever the file meta's
    group length says or wherever its elements lie. InvalidDicomError without the 'DICM' prefix."""
    fp = io.BytesIO(body)
    preamble = read_preamble(fp, force=False)
    file_meta = _read_file_meta_info(fp)
    command_set = _read_command_set_elements(fp)
    return preamble, file_meta, command_set, fp.tell()


def _is_deflated(file_meta: FileMetaDataset, dataset: bytes) -> bool:
    """Whether dcmread would inflate `dataset`: a deflated transfer syntax and something after the file meta."""
    return bool(dataset) and file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian


def _measure_inflated(deflated: bytes, limit: int) -> None:
    """Inflate `deflated` 1 MiB at a time, counting and dropping the output (memory stays small): DicomError as soon
    as it passes `limit` bytes, or for a stream that is corrupt or ends early."""
    inflater, pending, inflated = zlib.decompressobj(-zlib.MAX_WBITS), deflated, 0
    try:
        while not inflater.eof:
            piece = inflater.decompress(pending, _INFLATE_CHUNK)
            pending, inflated = inflater.unconsumed_tail, inflated + len(piece)
            if inflated > limit:
                raise DicomError(f"DICOM file inflates past {limit} bytes (decompression bomb?)")
            if not piece and not pending and not inflater.eof:  # input used up, no end of stream
                raise DicomError("truncated or corrupt DICOM file: its deflated dataset ends before its deflate stream")
    except zlib.error as exc:
        raise DicomError(f"truncated or corrupt DICOM file: its deflated dataset does not inflate: {exc}") from exc


def _inflate(deflated: bytes, limit: int) -> bytes:
    """`deflated` inflated, at most `limit` bytes of it (what _measure_inflated allowed; DicomError past that)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(deflated, limit + 1)
    except zlib.error as exc:
        raise DicomError(f"truncated or corrupt DICOM file: its deflated dataset does not inflate: {exc}") from exc
    if len(inflated) > limit:
        raise DicomError(f"DICOM file inflates past {limit} bytes (decompression bomb?)")
    if not inflater.eof:
        raise DicomError("truncated or corrupt DICOM file: its deflated dataset ends before its deflate stream")
    return inflated


def check_inflated_size(body: bytes, limit: int = MAX_INFLATED_BYTES) -> None:
    """Refuse (DicomError) a deflated-transfer-syntax file whose dataset inflates past `limit` bytes, inflating at
    most that much (in 1 MiB pieces, none kept). Files in any other transfer syntax, or with no 'DICM' prefix, pass
    unchanged; what pydicom raises for a file meta it cannot read."""
    if body[_PREAMBLE : _PREAMBLE + len(_MAGIC)] != _MAGIC:
        return
    _, file_meta, _, start = _head(body)
    if _is_deflated(file_meta, body[start:]):
        _measure_inflated(body[start:], limit)


def read_dicom(body: bytes, limit: int = MAX_INFLATED_BYTES) -> FileDataset:
    """pydicom.dcmread(body) (force=False), but a deflated dataset is inflated here, refused (DicomError) before
    more than `limit` bytes of it are kept and before any of it is parsed."""
    preamble, file_meta, command_set, start = _head(body)
    deflated = body[start:]
    if not _is_deflated(file_meta, deflated):
        return pydicom.dcmread(io.BytesIO(body), force=False)  # no other transfer syntax inflates anything on read
    _measure_inflated(deflated, limit)  # a bomb is refused here, having kept 1 MiB at most
    buffer = DicomBytesIO(_inflate(deflated, limit))
    # What read_partial does with the inflated dataset: explicit VR little endian, command set elements added.
    dataset = read_dataset(buffer, is_implicit_VR=False, is_little_endian=True)
    if command_set:
        dataset.update(command_set)
    ds = FileDataset(buffer, dataset, preamble, file_meta, is_implicit_VR=False, is_little_endian=True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


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
