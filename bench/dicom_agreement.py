"""Does a DICOM get the answer its picture gets as a PNG? Real hold-out radiographs, upscaled and written as 12-bit
DICOM the ways scanners and PACS write them, through the served handler's whole path (decode, gate, model, gate).

    .venv/bin/python bench/dicom_agreement.py --data-dir ../shared/data/pneumoniamnist \
        --model runs/local/storage/models/runs/<run>/classifiers/baseline_resnet18.pth [--per-class 30 --size 1024]

For each image: the picture upscaled to --size px (bicubic, 8 bit) is the PNG reference; each DICOM stores the same
picture in 12 bits (value x 16): MONOCHROME2 or MONOCHROME1 (inverted), with the VOI window that displays it as the
PNG shows it or without one (the handler then scales min-max, as a viewer does without a window), and once behind a
Modality LUT (rescale intercept). Prints, per encoding, how many the handler accepted, how many labels agree with
the PNG's, and the largest difference in calibrated probability, as Markdown.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from ts.utils.util import PredictionException

from shared.datasets import load_dataset
from shared.serving.handler import PneumoniaHandler
from shared.splits import develop_and_holdout

EXACT = (2040.5, 4081)  # the window that displays value x 16 as x
WHOLE_RANGE = (2048, 4096)  # a window over the whole 12-bit range: x 16 shows as x x 255/256, about


def dicom(
    stored: np.ndarray, photometric: str, window: tuple[float, float] | None = EXACT, intercept: int = 0
) -> bytes:
    """A CR secondary capture holding `stored` (uint16, 12 bits stored: the picture x 16) as `photometric`; with
    `window` (centre, width; None: no VOI transform), a LINEAR VOI window after the rescale `intercept`. EXACT
    displays value x 16 as x: width 255 x 16 + 1 = 4081, centre 2040.5 (PS3.3 C.11.2.1.2)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if intercept:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, intercept, "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window[0] + intercept, window[1]
    ds.PixelData = stored.astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


ENCODINGS: dict[str, Callable[[np.ndarray], bytes]] = {
    "MONOCHROME2, VOI window of the PNG's display": lambda p: dicom(p.astype(np.uint16) * 16, "MONOCHROME2"),
    "MONOCHROME1, VOI window of the PNG's display": lambda p: dicom((255 - p).astype(np.uint16) * 16, "MONOCHROME1"),
    "MONOCHROME2, rescale intercept -1024, the same window": lambda p: dicom(
        p.astype(np.uint16) * 16, "MONOCHROME2", intercept=-1024
    ),
    "MONOCHROME2, VOI window over the whole 12 bits (2048/4096)": lambda p: dicom(
        p.astype(np.uint16) * 16, "MONOCHROME2", WHOLE_RANGE
    ),
    "MONOCHROME2, no window (min-max)": lambda p: dicom(p.astype(np.uint16) * 16, "MONOCHROME2", None),
    "MONOCHROME1, no window (min-max)": lambda p: dicom((255 - p).astype(np.uint16) * 16, "MONOCHROME1", None),
}


def load_handler(model: Path) -> PneumoniaHandler:
    context = SimpleNamespace(
        system_properties={"model_dir": str(model.parent), "gpu_id": None},
        manifest={"model": {"serializedFile": model.name, "modelVersion": "bench"}},
    )
    handler = PneumoniaHandler()
    handler.initialize(context)
    return handler


def answer(handler: PneumoniaHandler, body: bytes) -> dict | None:
    """The handler's answer to one request body, None when it refuses it (a 400)."""
    try:
        logits, features = handler.inference(handler.preprocess([{"body": bytearray(body)}]))
    except PredictionException:
        return None
    if handler.feature_refusals(features):
        return None
    return handler.postprocess((logits, features))[0]


def png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--dataset", default="pneumoniamnist")
    parser.add_argument("--model", type=Path, required=True, help="a classifier checkpoint train-classifier saved")
    parser.add_argument("--per-class", type=int, default=30, help="hold-out images of each class")
    parser.add_argument("--size", type=int, default=1024, help="side the radiographs are upscaled to")
    args = parser.parse_args()

    handler = load_handler(args.model)
    _, holdout = develop_and_holdout(load_dataset(args.dataset, args.data_dir))
    labels = holdout.labels
    chosen = [i for cls in (0, 1) for i in np.flatnonzero(labels == cls)[: args.per_class]]
    rows = {name: {"accepted": 0, "agree": 0, "max_dp": 0.0} for name in ENCODINGS}
    png_accepted = 0
    for index in chosen:
        picture = np.asarray(holdout.load(index).convert("L").resize((args.size, args.size), Image.BICUBIC))
        reference = answer(handler, png(picture))
        png_accepted += reference is not None
        for name, encode in ENCODINGS.items():
            got = answer(handler, encode(picture))
            if got is None:
                continue
            rows[name]["accepted"] += 1
            if reference is not None:
                rows[name]["agree"] += got["label"] == reference["label"]
                dp = abs(got["pneumonia_probability"] - reference["pneumonia_probability"])
                rows[name]["max_dp"] = max(rows[name]["max_dp"], dp)
    n = len(chosen)
    print(f"{n} hold-out radiographs ({args.per_class} per class) at {args.size} px; PNG accepted {png_accepted}/{n}\n")
    print("| DICOM encoding | accepted | label agrees with PNG | max abs. difference in P(pneumonia) |")
    print("| --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['accepted']}/{n} | {row['agree']}/{png_accepted} | {row['max_dp']:.4f} |")


if __name__ == "__main__":
    main()
