"""The bound on a deflated DICOM's inflated size holds whatever its file meta says (security review, issue 25).

pydicom finds the end of the file meta by reading its elements, not by the group length (0002,0000): a file with no
group length, a zero, a wrong or a huge one, or the meta elements in another order is read all the same, and
dcmread then inflates the whole dataset at once. Each layout here is one pydicom reads: a small image in it decodes
as before, and a ~300 KB bomb in it is refused (HTTP 400) having kept little memory.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from shared.dicom import MAX_INFLATED_BYTES, DicomError, check_inflated_size, read_dicom
from shared.serving.predictor import ServingError, decode_image

BOMB_BYTES = 300 << 20  # inflated; ~306 KB deflated
PEAK_LIMIT = 100 << 20  # the review's bound on the whole decode path's memory for such a file
SOP_INSTANCE = generate_uid()


def element(group: int, number: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element (file meta are always encoded so)."""
    if len(value) % 2:
        value += b"\x00"
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", group, number, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, number, vr, len(value)) + value


META = [
    element(0x0002, 0x0001, b"OB", b"\x00\x01"),
    element(0x0002, 0x0002, b"UI", SecondaryCaptureImageStorage.encode()),
    element(0x0002, 0x0003, b"UI", SOP_INSTANCE.encode()),
    element(0x0002, 0x0010, b"UI", DeflatedExplicitVRLittleEndian.encode()),
    element(0x0002, 0x0012, b"UI", b"1.2.3.4"),
]


def group_length(value: int) -> bytes:
    return element(0x0002, 0x0000, b"UL", struct.pack("<I", value))


def with_length(value: Callable[[int], int]) -> Callable[[], bytes]:
    """The meta led by a group length of value(true length)."""
    return lambda: group_length(value(len(b"".join(META)))) + b"".join(META)


LAYOUTS: dict[str, Callable[[], bytes]] = {
    "group length present": with_length(lambda true: true),
    "group length missing": lambda: b"".join(META),
    "group length 0": with_length(lambda true: 0),
    "group length too short to hold the transfer syntax": with_length(lambda true: 12),
    "group length too large": with_length(lambda true: 0xFFFFFFF0),
    "meta elements in another order, group length last": lambda: b"".join(
        [META[3], META[0], META[2], META[1], META[4], group_length(0)]
    ),
}


def dicom_file(meta: bytes, deflated_dataset: bytes) -> bytes:
    return bytes(128) + b"DICM" + meta + deflated_dataset


def deflate(data: bytes | None = None, zeros: int = 0) -> bytes:
    """Raw deflate (no zlib header) of `data`, or of `zeros` zero bytes, as a deflated transfer syntax stores it."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    if data is not None:
        return deflater.compress(data) + deflater.flush()
    chunk, stream = bytes(1 << 20), []
    for _ in range(zeros >> 20):
        stream.append(deflater.compress(chunk))
    return b"".join(stream) + deflater.flush()


def image_dataset(pixels: np.ndarray) -> bytes:
    """An 8-bit MONOCHROME2 secondary capture as explicit VR little endian dataset bytes (no file meta)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, SOP_INSTANCE, "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, SOP_INSTANCE
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    written = buffer.getvalue()
    return written[144 + int.from_bytes(written[140:144], "little") :]  # after the file meta pydicom wrote


@pytest.fixture(scope="module")
def bomb_stream() -> bytes:
    stream = deflate(zeros=BOMB_BYTES)
    assert len(stream) < 400_000
    return stream


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    values = np.random.default_rng(0).integers(0, 256, size=(16, 12), dtype=np.uint8)
    values[0, :2] = 0, 255  # the full range: no window, so the viewer shows it from its minimum to its maximum
    return values


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pydicom_reads_each_layout_and_a_small_deflated_image_in_it_still_decodes(
    layout: str, pixels: np.ndarray
) -> None:
    body = dicom_file(LAYOUTS[layout](), deflate(image_dataset(pixels)))
    assert pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    np.testing.assert_array_equal(np.asarray(decode_image(body)), pixels)
    shown = read_dicom(body)
    assert shown.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian and shown.Rows == 16
    check_inflated_size(body)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_deflate_bomb_is_refused_whatever_its_file_meta_says(layout: str, bomb_stream: bytes) -> None:
    """300 MiB of zeros in ~306 KB: HTTP 400 naming the bomb once MAX_INFLATED_BYTES are inflated, the output
    measured 1 MiB at a time and dropped, so the whole decode path peaks far below the bomb's size."""
    bomb = dicom_file(LAYOUTS[layout](), bomb_stream)
    tracemalloc.start()
    try:
        with pytest.raises(ServingError, match=f"inflates past {MAX_INFLATED_BYTES} bytes") as refused:
            decode_image(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.status == 400
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB"
    with pytest.raises(DicomError, match="inflates past 1000000 bytes"):
        check_inflated_size(bomb, limit=1_000_000)


def test_the_limit_is_exact_and_holds_for_the_inflate_that_is_kept() -> None:
    body = dicom_file(LAYOUTS["group length missing"](), deflate(zeros=4 << 20))
    with pytest.raises(DicomError, match="inflates past"):
        read_dicom(body, limit=(4 << 20) - 1)
    check_inflated_size(body, limit=4 << 20)  # exactly the limit: allowed


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda stream: stream[: len(stream) // 2], "ends before its deflate stream"),
        (lambda stream: b"\xff" * 16 + stream, "does not inflate"),
    ],
    ids=["truncated stream", "not a deflate stream"],
)
def test_a_damaged_deflate_stream_is_a_400(pixels: np.ndarray, damage: Callable[[bytes], bytes], message: str) -> None:
    body = dicom_file(LAYOUTS["group length 0"](), damage(deflate(image_dataset(pixels))))
    with pytest.raises(ServingError, match=message) as refused:
        decode_image(body)
    assert refused.value.status == 400
