"""What the page tells a person when an image gets no answer: the plausibility gate's reason codes
(shared.plausibility.REASONS) and the decoder's refusals (shared.serving.handler) in plain words.

The handler leads a gate refusal's message with its code, `implausible input [<reason>]: ...`; other refusals are
recognised by their message. The technical message is kept as `detail`, shown under the sentence.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

REASON = re.compile(r"implausible input \[(\w+)\]")

# reason code -> (title, what it means and what to do), one per code of shared.plausibility.REASONS.
GATE_REASONS: dict[str, tuple[str, str]] = {
    "too_small": (
        "The image is too small",
        "It has fewer pixels per side than this model needs to judge a chest X-ray. Upload the original "
        "radiograph rather than a thumbnail.",
    ),
    "aspect_ratio": (
        "The image has the wrong shape",
        "Its width-to-height ratio is far from that of the chest X-rays this model was trained on. Upload the whole "
        "frontal chest radiograph, not a strip or a cropped part of it.",
    ),
    "not_grayscale": (
        "The image is in colour",
        "Chest X-rays are grey. A colour image is a photo, a screenshot or an annotated picture, which this model "
        "cannot judge. Upload the radiograph itself.",
    ),
    "constant": (
        "The image is (almost) blank",
        "It has nearly the same brightness everywhere, so there is nothing for the model to look at. Check that "
        "the right file was chosen and that it is not an empty or fully over- or under-exposed frame.",
    ),
    "out_of_distribution": (
        "The image does not look like the chest X-rays this model knows",
        "It differs too much from the radiographs the model was trained on (for example a photo, a document, an "
        "inverted, rotated or heavily processed image, or a different kind of X-ray), so the model refuses to guess "
        "rather than give an answer that would mean nothing.",
    ),
}

# (message pattern, code, title, sentence) for the decoder's refusals and the limits, checked in order.
OTHER_REFUSALS: list[tuple[re.Pattern[str], str, str, str]] = [
    (
        re.compile(r"not an image|cannot identify", re.I),
        "not_an_image",
        "This file is not an image the model can read",
        "Upload a chest X-ray as a PNG, JPEG or DICOM file.",
    ),
    (
        re.compile(r"empty request body", re.I),
        "empty",
        "The file is empty",
        "Choose the image file again: nothing was received.",
    ),
    (
        re.compile(r"image too large|decompression bomb", re.I),
        "too_many_pixels",
        "The image has too many pixels",
        "It is larger than any chest X-ray the classifier accepts. Upload a smaller export of the radiograph.",
    ),
    (
        re.compile(r"truncated|corrupt", re.I),
        "corrupt",
        "The file is damaged",
        "It could not be read to the end (cut off or corrupt). Export or download the image again.",
    ),
    (
        re.compile(r"DICOM", re.I),
        "dicom",
        "This DICOM file cannot be shown to the model",
        "It has no single grey image the model can read (no pixel data, several frames or colour, or an "
        "unsupported encoding). Export the frontal view as PNG or as a single-frame grey DICOM.",
    ),
]


@dataclass(frozen=True)
class Refusal:
    """What the page shows: a short `title`, a `sentence` for a person, the machine `code` and the `detail`."""

    code: str
    title: str
    sentence: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def explain_refusal(message: str) -> Refusal:
    """The plain-words refusal of a 400 answer of the classifier (its message as TorchServe sent it)."""
    found = REASON.search(message)
    if found and found.group(1) in GATE_REASONS:
        title, sentence = GATE_REASONS[found.group(1)]
        return Refusal(found.group(1), title, sentence, message)
    for pattern, code, title, sentence in OTHER_REFUSALS:
        if pattern.search(message):
            return Refusal(code, title, sentence, message)
    return Refusal("refused", "The classifier refused this image", "It gave this reason:", message)


def too_large(limit: int) -> Refusal:
    """The refusal of an upload over the page's byte limit."""
    return Refusal(
        "too_large",
        "The file is too large",
        f"Uploads are limited to {limit / 1e6:.1f} MB. Export the radiograph at a lower resolution or as JPEG.",
        f"request body larger than {limit} bytes",
    )


def unavailable(message: str) -> Refusal:
    """The classifier did not answer (not the image's fault)."""
    return Refusal(
        "unavailable",
        "The classifier is not available right now",
        "This is not a problem with your image. Try again in a minute; if it persists, the operator should check "
        "that TorchServe is running and has the model registered.",
        message,
    )
