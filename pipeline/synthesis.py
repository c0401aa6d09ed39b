"""Which class(es) the experiment synthesizes (`pneumonia experiment --synthesize`), and how many of each.

The generate step's --num-images N is the size of the synthetic pool; the choice splits it between the classes:

    minority   (default) N images of the development split's minority class (PneumoniaMNIST: normal, 26%);
               on a tie, as balanced
    pneumonia  N pneumonia images (the seed's choice: on RSNA pneumonia is the minority)
    normal     N normal images
    balanced   both classes in equal share: N // 2 each, the odd image to the minority (on a tie to normal).
               The pool adds no class preference; it does not correct the real imbalance (minority does).

The minority is counted on the development split's labels (shared.splits.develop_and_holdout), never the hold-out.
The images come from one conditional generator (the experiment trains its GAN with --conditional), called once per
class: both drivers run one generate step per class with a count, into one synthetic folder (pipeline.plan).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shared.datasets import CLASS_NAMES, NORMAL, PNEUMONIA

SYNTHESIZE = ("minority", "pneumonia", "normal", "balanced")
NEEDS_LABELS = frozenset({"minority", "balanced"})  # choices that count the development split's classes


def minority_class(labels: np.ndarray) -> str | None:
    """The class with fewer images among `labels` ("normal" or "pneumonia"); None on a tie."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=2)
    if counts[NORMAL] == counts[PNEUMONIA]:
        return None
    return CLASS_NAMES[NORMAL] if counts[NORMAL] < counts[PNEUMONIA] else CLASS_NAMES[PNEUMONIA]


def synthesis_counts(choice: str, count: int, develop_labels: Callable[[], np.ndarray]) -> dict[str, int]:
    """{class name: images to generate} for `choice` and a pool of `count` images, in label order, zero counts left
    out. `develop_labels` gives the development split's labels; it is called only for minority and balanced."""
    if choice not in SYNTHESIZE:
        raise ValueError(f"--synthesize must be one of {', '.join(SYNTHESIZE)}, got {choice!r}")
    if choice in ("pneumonia", "normal"):
        return {choice: count}
    minority = minority_class(develop_labels())
    if choice == "minority" and minority is not None:
        return {minority: count}
    half = count // 2
    odd = (minority or CLASS_NAMES[NORMAL]) if count % 2 else None
    counts = {name: half + (name == odd) for name in (CLASS_NAMES[NORMAL], CLASS_NAMES[PNEUMONIA])}
    return {name: n for name, n in counts.items() if n}
