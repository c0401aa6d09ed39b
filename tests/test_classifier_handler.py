"""The TorchServe handler, stage by stage and batch by batch, without a TorchServe server."""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from ts.context import Context, RequestProcessor
from ts.utils.util import PredictionException

from shared.calibration import Calibration
from shared.dicom import DicomError, check_inflated_size
from shared.gradcam import heatmap_overlay
from shared.images import MAX_BYTES_PER_PIXEL, MAX_IMAGE_PIXELS
from shared.models.classifier import (
    build_classifier,
    classifier_config,
    classifier_transform,
    penultimate_features,
    save_classifier,
)
from shared.models.export import FORMATS as EXPORT_FORMATS
from shared.models.export import export_classifier
from shared.plausibility import PlausibilityGate, PpcaScore, layout_vector
from shared.serving import predictor as shared_predictor
from shared.serving.handler import PneumoniaHandler, decode_image
from shared.serving.predictor import ServingError, check_pixel_count

SIZE = 16


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> PneumoniaHandler:
    model_dir = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = build_classifier("resnet18", in_channels=1, image_size=SIZE, weights="none")
    save_classifier(model_dir / "model.pth", model, classifier_config("resnet18", 1, SIZE, "baseline", "none"))
    context = SimpleNamespace(
        system_properties={"model_dir": str(model_dir), "gpu_id": None},
        manifest={"model": {"serializedFile": "model.pth", "modelVersion": "1.0"}},
    )
    h = PneumoniaHandler()
    h.initialize(context)
    return h


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """A 24 x 24 uint8 image spanning 0..255, so min/max rescaling leaves it unchanged."""
    arr = np.random.default_rng(0).integers(0, 256, size=(24, 24), dtype=np.uint8)
    arr[0, 0], arr[0, 1] = 0, 255
    return arr


def encode(arr: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format=fmt)
    return buffer.getvalue()


def cr_dataset(syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """A CR secondary-capture dataset with its file meta, no image yet."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    return ds


def file_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_bytes(arr: np.ndarray | None, photometric: str = "MONOCHROME2") -> bytes:
    ds = cr_dataset()
    if arr is not None:
        frames = arr.shape[0] if arr.ndim == 3 else 1
        ds.Rows, ds.Columns = arr.shape[-2:]
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = arr.tobytes()
    return file_bytes(ds)


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's header), with a valid CRC."""
    data = bytearray(encode(np.zeros((4, 4), dtype=np.uint8), "PNG"))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of header fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def predict(handler: PneumoniaHandler, rows: list[dict]) -> list[dict]:
    return handler.postprocess(handler.inference(handler.preprocess(rows)))


def test_initialize_loads_checkpoint(handler: PneumoniaHandler) -> None:
    assert handler.initialized
    assert handler.device == torch.device("cpu")
    assert handler.model_version == "1.0"
    assert handler.config["image_size"] == SIZE


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "DICOM"])
def test_each_format_gives_an_answer(handler: PneumoniaHandler, pixels: np.ndarray, fmt: str) -> None:
    body = dicom_bytes(pixels) if fmt == "DICOM" else encode(pixels, fmt)
    batch = handler.preprocess([{"body": bytearray(body)}])
    assert batch.shape == (1, 1, SIZE, SIZE)
    (answer,) = handler.postprocess(handler.inference(batch))
    assert set(answer) == {
        "label", "pneumonia_probability", "decision_threshold", "operating_rule", "model", "model_version",
    }  # fmt: skip
    assert answer["model"] == "one resnet18 model"
    assert answer["decision_threshold"] == 0.5 and answer["operating_rule"] == "0.5"  # saved without calibration
    p = answer["pneumonia_probability"]
    assert isinstance(p, float) and 0.0 <= p <= 1.0
    assert answer["label"] == ("pneumonia" if p >= 0.5 else "normal")
    assert answer["model_version"] == "1.0"


def test_dicom_and_png_of_same_pixels_agree(handler: PneumoniaHandler, pixels: np.ndarray) -> None:
    (png,) = predict(handler, [{"data": encode(pixels, "PNG")}])
    (dcm,) = predict(handler, [{"data": dicom_bytes(pixels)}])
    assert dcm["pneumonia_probability"] == pytest.approx(png["pneumonia_probability"], abs=1e-5)


def test_monochrome1_is_inverted(handler: PneumoniaHandler, pixels: np.ndarray) -> None:
    inverted = handler.preprocess([{"data": dicom_bytes(pixels, "MONOCHROME1")}])
    expected = handler.preprocess([{"data": encode(255 - pixels, "PNG")}])
    plain = handler.preprocess([{"data": dicom_bytes(pixels)}])
    torch.testing.assert_close(inverted, expected)
    assert not torch.allclose(inverted, plain)


def test_dicom_rescaled_by_min_max(handler: PneumoniaHandler, pixels: np.ndarray) -> None:
    narrow = (pixels // 4 + 100).astype(np.uint8)  # 100..163: stretched back to 0..255
    stretched = np.round((narrow - 100.0) / 63.0 * 255.0).astype(np.uint8)
    torch.testing.assert_close(
        handler.preprocess([{"data": dicom_bytes(narrow)}]), handler.preprocess([{"data": encode(stretched, "PNG")}])
    )


# --- DICOM as a viewer shows it (shared.dicom) ----------------------------------------------------------------

WINDOW = {"WindowCenter": 2040.5, "WindowWidth": 4081}  # maps modality values 0..4080 linearly onto 0..1 exactly


def radiograph_dicom(
    stored: np.ndarray, photometric: str = "MONOCHROME2", syntax: str = ExplicitVRLittleEndian, **elements: object
) -> bytes:
    """A 12-bit CR radiograph (16 bits allocated) with the given stored values and extra elements."""
    ds = cr_dataset(syntax)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    return file_bytes(ds)


def voi_lut_sequence() -> Sequence:
    """A VOI LUT that maps modality values 16 v (0..4095) to v (8-bit output)."""
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 8])  # LUT Descriptor: entries, first input value, bits per entry
    item.add_new(0x00283006, "US", [min(255, round(i / 16)) for i in range(4096)])  # LUT Data
    return Sequence([item])


VIEWER_CASES = {
    "MONOCHROME2 with a window": lambda v: radiograph_dicom(v * 16, **WINDOW),
    "MONOCHROME1 with a window": lambda v: radiograph_dicom(4080 - v * 16, "MONOCHROME1", **WINDOW),
    "rescale slope and intercept": lambda v: radiograph_dicom(
        v * 8 + 50, RescaleSlope=2, RescaleIntercept=-100, **WINDOW
    ),
    "the first of several windows": lambda v: radiograph_dicom(
        v * 16, WindowCenter=[2040.5, 100.0], WindowWidth=[4081, 10]
    ),
    "a VOI LUT sequence": lambda v: radiograph_dicom(v * 16, VOILUTSequence=voi_lut_sequence()),
    "12-bit MONOCHROME1 without a window": lambda v: radiograph_dicom(4080 - v * 16, "MONOCHROME1"),
    "deflated": lambda v: radiograph_dicom(v * 16, syntax=DeflatedExplicitVRLittleEndian, **WINDOW),
}


@pytest.mark.parametrize("case", VIEWER_CASES)
def test_dicom_is_shown_as_a_viewer_shows_it(handler: PneumoniaHandler, pixels: np.ndarray, case: str) -> None:
    """12-bit radiographs of the same picture, through the Modality LUT, VOI window or LUT and MONOCHROME1: the
    model sees exactly what it sees from the PNG."""
    body = VIEWER_CASES[case](pixels.astype(np.int64))
    np.testing.assert_array_equal(np.asarray(decode_image(body)), pixels)
    torch.testing.assert_close(
        handler.preprocess([{"data": body}]), handler.preprocess([{"data": encode(pixels, "PNG")}])
    )


def test_a_window_saturates_outside_its_range(pixels: np.ndarray) -> None:
    """Window [2040, 4080] of values 16 v: the darker half is black, the rest stretched over 0..255."""
    shown = np.asarray(
        decode_image(radiograph_dicom(pixels.astype(np.int64) * 16, WindowCenter=3060.5, WindowWidth=2041))
    )
    dark = pixels.astype(np.int64) * 16 <= 2040
    assert (shown[dark] == 0).all() and shown[~dark].min() > 0 and shown.max() == 255


def deflate_bomb(inflated_bytes: int) -> bytes:
    """A deflated-transfer-syntax DICOM whose dataset inflates to `inflated_bytes` of zeros, in a few hundred KB."""
    small = radiograph_dicom(np.zeros((4, 4), dtype=np.int64), syntax=DeflatedExplicitVRLittleEndian)
    meta_end = 144 + int.from_bytes(small[140:144], "little")
    deflater, chunk, stream = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS), bytes(1 << 20), []
    for _ in range(inflated_bytes >> 20):
        stream.append(deflater.compress(chunk))
    stream.append(deflater.flush())
    return small[:meta_end] + b"".join(stream)


def rle_dicom(rows: int, columns: int, samples: int = 1, value: int = 0) -> bytes:
    """An RLE Lossless DICOM of rows x columns 16-bit pixels (`samples` each), all `value`: each row a few PackBits
    runs, so that 8000 x 8000 (128 MB once decoded) takes 2 MB. Valid: pydicom decodes it."""

    def row(byte: int) -> bytes:
        runs, left = bytearray(), columns
        while left:
            run = min(left, 128)
            runs += bytes([257 - run, byte]) if run > 1 else bytes([0, byte])  # a replicate run, or one literal
            left -= run
        return bytes(runs)

    segments = []  # per sample, its high bytes then its low bytes
    for _ in range(samples):
        for shift in (8, 0):
            segment = row((value >> shift) & 0xFF) * rows
            segments.append(segment + b"\0" * (len(segment) % 2))
    offsets = np.cumsum([64] + [len(segment) for segment in segments[:-1]]).tolist()
    header = np.array([len(segments), *offsets] + [0] * (15 - len(segments)), dtype="<u4").tobytes()
    ds = cr_dataset(RLELossless)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = encapsulate([header + b"".join(segments)])
    ds["PixelData"].VR = "OB"
    return file_bytes(ds)


def refused_peak(body: bytes, **kwargs: int) -> tuple[ServingError, int]:
    """The shared decoder's refusal of `body` and the memory it allocated meanwhile (tracemalloc peak, bytes)."""
    tracemalloc.start()
    try:
        with pytest.raises(ServingError) as refused:
            shared_predictor.decode_image(body, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return refused.value, peak


def test_an_image_over_the_pixel_limit_is_refused_from_its_header_before_it_is_decoded() -> None:
    """The review's file (8000 x 8000 16-bit, 64 M pixels: allowed before, ~1.6 GB and seconds to decode), here in
    2 MB of RLE: refused from its header with a few MB allocated. Samples per pixel and bits allocated count: a
    16-bit RGB 4000 x 4000 has fewer pixels than the limit but 6 bytes each. The limit admits the largest chest
    radiographs (4300 x 4300, 16 bits); the v2 runtime's setting (max_pixels) lowers or raises it."""
    small = shared_predictor.decode_image(rle_dicom(64, 300, value=1234))  # the builder makes files that decode
    assert small.size == (300, 64)
    bomb = rle_dicom(8000, 8000, value=1234)
    assert len(bomb) < 3 << 20
    error, peak = refused_peak(bomb)
    assert error.status == 400 and "image too large: 8000 x 8000 x 1 pixels of 2 bytes" in error.message
    assert f"limit of {MAX_IMAGE_PIXELS} pixels" in error.message
    assert peak < 16 << 20  # the file and its parse only: 128 MB of pixels were never allocated
    with pytest.raises(PredictionException, match="image too large") as torchserve:
        decode_image(bomb)  # TorchServe's handler: the same check, HTTP 400
    assert torchserve.value.error_code == 400
    error, peak = refused_peak(rle_dicom(4000, 4000, samples=3))
    assert "4000 x 4000 x 1 pixels of 6 bytes (96000000 bytes decoded)" in error.message and peak < 16 << 20
    assert 4000 * 4000 < MAX_IMAGE_PIXELS < 4000 * 4000 * 6 // MAX_BYTES_PER_PIXEL
    error, _ = refused_peak(rle_dicom(64, 64, samples=3))  # under the limit, but colour: refused all the same
    assert "1 frames of 3 samples per pixel; expected one grayscale frame" in error.message
    check_pixel_count(4300, 4300, 1, 2)  # the largest chest radiographs pass
    error, _ = refused_peak(encode(np.zeros((40, 40), dtype=np.uint8), "PNG"), max_pixels=1000)
    assert "40 x 40 x 1 pixels of 1 bytes (1600 bytes decoded) exceeds the limit of 1000 pixels" in error.message
    assert shared_predictor.decode_image(encode(np.zeros((40, 40), dtype=np.uint8), "PNG"), max_pixels=1600)


def test_a_deflate_bomb_is_refused_before_it_is_inflated() -> None:
    """150 MB of zeros in ~150 KB: refused once MAX_INFLATED_BYTES are inflated, in small pieces that are not kept
    (pydicom alone would inflate it all), and the limit holds at any size."""
    bomb = deflate_bomb(150 << 20)
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(PredictionException, match="inflates past") as refused:
            decode_image(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.error_code == 400
    assert peak < 32 << 20  # inflated 1 MiB at a time, never kept (MAX_INFLATED_BYTES is ~129 MB)
    with pytest.raises(DicomError, match="inflates past 1000000 bytes"):
        check_inflated_size(deflate_bomb(4 << 20), limit=1_000_000)
    check_inflated_size(deflate_bomb(4 << 20), limit=5 << 20)  # within the limit: passes


def test_batch_of_two_rows_gives_two_answers(handler: PneumoniaHandler, pixels: np.ndarray) -> None:
    answers = predict(handler, [{"data": encode(pixels, "PNG")}, {"body": encode(255 - pixels, "JPEG")}])
    assert len(answers) == 2
    (alone,) = predict(handler, [{"data": encode(pixels, "PNG")}])
    assert answers[0]["pneumonia_probability"] == pytest.approx(alone["pneumonia_probability"], abs=1e-5)


def truncated_png() -> bytes:
    data = encode(np.random.default_rng(1).integers(0, 256, size=(64, 64), dtype=np.uint8), "PNG")
    return data[: len(data) // 2]


def bomb_png(factor: float) -> bytes:
    side = int((factor * MAX_IMAGE_PIXELS) ** 0.5) + 1
    return png_claiming_size(side, side)


BAD_INPUTS = {
    "empty body": (lambda: b"", "empty request body"),
    "missing body": (lambda: None, "empty request body"),
    "text": (lambda: b"hello, this is not an image", "not an image"),
    "json": (lambda: {"image": "x"}, "raw image bytes"),
    "truncated png": (truncated_png, "truncated or corrupt PNG"),
    "bomb just over the limit": (lambda: bomb_png(1), "too large"),  # PIL itself only warns here
    "bomb far over the limit": (lambda: bomb_png(4), "too large"),
    "dicom without pixels": (lambda: dicom_bytes(None), "no pixel data"),
    "multi-frame dicom": (lambda: dicom_bytes(np.zeros((2, 8, 8), dtype=np.uint8)), "expected one grayscale frame"),
    "truncated dicom": (lambda: dicom_bytes(np.zeros((8, 8), dtype=np.uint8))[:-10], "cannot decode DICOM pixel"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_400_naming_the_problem(handler: PneumoniaHandler, case: str) -> None:
    make_body, message = BAD_INPUTS[case]
    with pytest.raises(PredictionException, match=message) as info:
        handler.preprocess([{"data": make_body()}])
    assert info.value.error_code == 400


def batch_context(headers: list[dict[str, str]]) -> Context:
    """TorchServe's own per-batch Context, as its worker builds it: one RequestProcessor per row."""
    context = Context("pneumonia", "/unused", {"model": {}}, len(headers), None, "0.12.0")
    context.request_processor = [RequestProcessor(h) for h in headers]
    return context


def test_handle_answers_each_row_of_a_mixed_batch_on_its_own(handler: PneumoniaHandler, pixels: np.ndarray) -> None:
    rows = [{"body": encode(pixels, "PNG")}, {"body": b"garbage"}, {"body": encode(pixels, "JPEG")}]
    context = batch_context([{}, {}, {"explain": "True"}])
    prediction, error, explanation = handler.handle(rows, context)

    (alone,) = predict(handler, [{"data": encode(pixels, "PNG")}])
    assert prediction == alone
    assert error == {"code": 400, "type": "PredictionException", "message": error["message"]}
    assert "not an image" in error["message"]
    assert context.get_response_status(1) == (400, "Bad Request")
    assert context.get_response_status(0)[0] == context.get_response_status(2)[0] == 200
    assert Image.open(io.BytesIO(explanation)).format == "PNG"
    assert context.get_response_content_type(2) == "image/png"
    assert context.get_response_content_type(0) is None
    assert all(context.get_response_headers(i)["X-Batch-Size"] == "3" for i in range(3))


def test_handle_of_one_bad_row_raises_400(handler: PneumoniaHandler) -> None:
    with pytest.raises(PredictionException, match="empty request body") as info:
        handler.handle([{"body": b""}], batch_context([{}]))
    assert info.value.error_code == 400


def test_explanation_overlays_grad_cam_on_the_image(handler: PneumoniaHandler, pixels: np.ndarray) -> None:
    """A small input is shown at 224 px; the probability header agrees with the prediction."""
    context = batch_context([{"explain": "True"}])
    (png,) = handler.handle([{"data": encode(pixels, "PNG")}], context)
    picture = Image.open(io.BytesIO(png))
    assert picture.mode == "RGB" and picture.size == (224, 224)
    rgb = np.asarray(picture, dtype=np.int16)
    assert np.abs(rgb[..., 0] - rgb[..., 2]).max() > 20  # coloured by the heat map, not a grey copy
    (answer,) = predict(handler, [{"data": encode(pixels, "PNG")}])
    p = float(context.get_response_headers(0)["X-Pneumonia-Probability"])
    assert p == pytest.approx(answer["pneumonia_probability"], abs=1e-5)


def test_heatmap_overlay_keeps_aspect_and_caps_size() -> None:
    heat = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    assert heatmap_overlay(Image.new("L", (2000, 1000)), heat).size == (1024, 512)
    assert heatmap_overlay(Image.new("L", (300, 600)), heat).size == (300, 600)
    hot = np.asarray(heatmap_overlay(Image.new("L", (300, 300)), np.ones((4, 4), dtype=np.float32)))
    cold = np.asarray(heatmap_overlay(Image.new("L", (300, 300)), np.zeros((4, 4), dtype=np.float32)))
    assert hot[..., 0].mean() > hot[..., 2].mean() and cold[..., 2].mean() > cold[..., 0].mean()  # jet: red hot


# --- a calibrated model with a plausibility gate (what train-classifier saves) -----------------------------------


def tight_gate(copies: list[Image.Image], features: np.ndarray) -> dict:
    """A plausibility gate (as a config entry) fitted on these images and the model's features of them alone, with
    bounds twice their worst score: the images pass, anything unlike them is refused."""
    layout = PpcaScore.fit(np.stack([layout_vector(img) for img in copies]), 8)
    feature_model = PpcaScore.fit(features, 8)
    return PlausibilityGate(
        min_side=12, min_aspect=0.7, max_aspect=1.4, min_std=2.0,
        layout=layout, max_layout_score=float(layout.score(np.stack([layout_vector(i) for i in copies])).max()) * 2,
        features=feature_model, max_feature_score=float(feature_model.score(features).max()) * 2,
        fitted_on=len(copies),
    ).to_dict()  # fmt: skip


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, pixels: np.ndarray) -> PneumoniaHandler:
    """The handler fixture's network, saved with a calibration (T = 2, threshold 0.3) and a gate fitted on twenty
    slightly noisy copies of `pixels` alone (so `pixels` is in distribution and other images are far out of it)."""
    model_dir = tmp_path_factory.mktemp("gated")
    torch.manual_seed(0)
    model = build_classifier("resnet18", in_channels=1, image_size=SIZE, weights="none").eval()
    config = classifier_config("resnet18", 1, SIZE, "baseline", "none")
    rng = np.random.default_rng(1)
    copies = [
        Image.fromarray(np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)) for _ in range(20)
    ]
    with torch.no_grad():
        batch = torch.stack([classifier_transform(config, train=False)(img) for img in copies])
        features = penultimate_features(model, batch)[1].double().numpy()
    config["calibration"] = Calibration(2.0, 0.3, "youden", None, 0.9, 0.8, 0.1, 0.05, 50).to_dict()
    config["plausibility"] = tight_gate(copies, features)
    save_classifier(model_dir / "model.pth", model, config)
    context = SimpleNamespace(
        system_properties={"model_dir": str(model_dir), "gpu_id": None},
        manifest={"model": {"serializedFile": "model.pth", "modelVersion": "2.0"}},
    )
    h = PneumoniaHandler()
    h.initialize(context)
    return h


def test_answers_use_the_saved_temperature_and_threshold(gated: PneumoniaHandler, pixels: np.ndarray) -> None:
    batch = gated.preprocess([{"data": encode(pixels, "PNG")}])
    logits, _ = gated.inference(batch)
    (answer,) = gated.postprocess((logits, None))
    expected = torch.softmax(logits.double() / 2.0, dim=1)[0, 1].item()
    assert answer["pneumonia_probability"] == pytest.approx(expected, abs=1e-9)
    assert answer["label"] == ("pneumonia" if expected >= 0.3 else "normal")
    assert answer["decision_threshold"] == 0.3 and "registered_model" not in answer
    assert answer["operating_rule"] == "youden"  # the rule the saved calibration names


def test_answers_name_the_registry_version_the_archive_holds(tmp_path: Path, pixels: np.ndarray) -> None:
    """registry.json in the .mar (extracted into model_dir by TorchServe): every answer carries its models:/ URI;
    an entry that is not one fails the model's load instead of answering under a wrong name."""
    torch.manual_seed(0)
    model = build_classifier("resnet18", in_channels=1, image_size=SIZE, weights="none")
    save_classifier(tmp_path / "model.pth", model, classifier_config("resnet18", 1, SIZE, "baseline", "none"))
    entry = {"name": "pneumonia-augmented", "version": "3", "uri": "models:/pneumonia-augmented/3"}
    (tmp_path / "registry.json").write_text(json.dumps(entry))
    context = SimpleNamespace(
        system_properties={"model_dir": str(tmp_path), "gpu_id": None},
        manifest={"model": {"serializedFile": "model.pth", "modelVersion": "1.0"}},
    )
    handler = PneumoniaHandler()
    handler.initialize(context)
    (answer,) = predict(handler, [{"data": encode(pixels, "PNG")}])
    assert answer["registered_model"] == "models:/pneumonia-augmented/3" and answer["model_version"] == "1.0"
    (tmp_path / "registry.json").write_text(json.dumps({"name": "pneumonia-augmented"}))
    with pytest.raises(ServingError, match="is not a registry entry"):
        PneumoniaHandler().initialize(context)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda px: np.stack([px, px // 2, 255 - px], axis=2), "not_grayscale"),
        (lambda px: np.full((24, 24), 77, dtype=np.uint8), "constant"),
        (lambda px: px[:8, :8], "too_small"),
        (lambda px: np.tile(px, (1, 3)), "aspect_ratio"),
        (lambda px: 255 - px, "out_of_distribution"),
    ],
)
def test_the_gate_refuses_implausible_inputs_with_a_reason(gated: PneumoniaHandler, pixels: np.ndarray, make, reason):
    body = encode(make(pixels), "PNG")
    with pytest.raises(PredictionException, match=rf"implausible input \[{reason}\]") as refused:
        gated.handle([{"data": body}], batch_context([{}]))
    assert refused.value.error_code == 400
    (answer,) = gated.handle([{"data": encode(pixels, "PNG")}], batch_context([{}]))  # and it keeps serving
    assert answer["model_version"] == "2.0"


def test_a_refused_row_does_not_fail_its_batch(gated: PneumoniaHandler, pixels: np.ndarray) -> None:
    colour = encode(np.stack([pixels, pixels // 2, 255 - pixels], axis=2), "PNG")
    context = batch_context([{}, {}, {}])
    good, bad, far = gated.handle(
        [{"data": encode(pixels, "PNG")}, {"data": colour}, {"data": encode(255 - pixels, "PNG")}], context
    )
    assert good["model_version"] == "2.0"
    assert bad["code"] == 400 and "[not_grayscale]" in bad["message"]
    assert far["code"] == 400 and "[out_of_distribution]" in far["message"]
    assert [context.get_response_status(i)[0] for i in range(3)] == [200, 400, 400]


@pytest.mark.parametrize("fmt", sorted(EXPORT_FORMATS))
def test_an_exported_model_is_served_like_its_checkpoint(
    gated: PneumoniaHandler, pixels: np.ndarray, fmt: str, tmp_path: Path
) -> None:
    artifact = export_classifier(Path(gated.model_pt_path), fmt, tmp_path / f"model{EXPORT_FORMATS[fmt]}")
    served = PneumoniaHandler()
    served.initialize(
        SimpleNamespace(
            system_properties={"model_dir": str(tmp_path), "gpu_id": None},
            manifest={"model": {"serializedFile": artifact.name, "modelVersion": "2.0"}},
        )
    )
    assert served.exported is not None and served.model is None
    body = encode(pixels, "PNG")
    (answer,) = served.handle([{"data": body}], batch_context([{}]))
    (expected,) = gated.handle([{"data": body}], batch_context([{}]))
    assert answer["label"] == expected["label"]
    assert answer["pneumonia_probability"] == pytest.approx(expected["pneumonia_probability"], abs=1e-5)
    with pytest.raises(PredictionException, match=r"implausible input \[out_of_distribution\]"):
        served.handle([{"data": encode(255 - pixels, "PNG")}], batch_context([{}]))  # the gate travels along
    with pytest.raises(PredictionException, match="explanations need the PyTorch checkpoint"):
        served.handle([{"data": body}], batch_context([{"explain": "True"}]))
