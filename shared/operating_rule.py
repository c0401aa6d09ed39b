"""OperatingRule: how a classifier's decision threshold is chosen, as a user states it (--operating-rule).

    OperatingRule.parse("prevalence")        # the Bayes rule for accuracy at the validation data's prevalence
    OperatingRule.parse("prevalence:0.62")   # ... at a stated pneumonia prevalence of the data the model will see
    OperatingRule.parse("sensitivity:0.95")  # the highest threshold reaching this validation sensitivity
    OperatingRule.parse("youden")            # Youden's J on the validation predictions

shared.calibration applies it; this module only names it, so that the configs can check it without importing the
numerical stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METHODS = {"youden": "youden", "sensitivity": "target-sensitivity", "prevalence": "prevalence"}  # rule -> method


@dataclass(frozen=True)
class OperatingRule:
    """How the decision threshold is chosen (see the module docstring): method "youden", "target-sensitivity" (value:
    the sensitivity) or "prevalence" (value: the stated prevalence; None: the validation data's own)."""

    method: str
    value: float | None = None

    @classmethod
    def parse(cls, text: str) -> OperatingRule:
        """'youden', 'sensitivity:0.95', 'prevalence' or 'prevalence:0.62'; ValueError saying what is expected."""
        name, _, value = text.strip().lower().partition(":")
        expected = f"expected youden, sensitivity:S (S in (0, 1]) or prevalence[:P] (P in (0, 1)), got {text!r}"
        if name not in METHODS or (name == "youden" and value) or (name == "sensitivity" and not value):
            raise ValueError(expected)
        try:
            number = float(value) if value else None
        except ValueError:
            raise ValueError(expected) from None
        if number is not None and not (0.0 < number < 1.0 or (name == "sensitivity" and number == 1.0)):
            raise ValueError(expected)
        return cls(METHODS[name], number)

    def __str__(self) -> str:
        name = {method: rule for rule, method in METHODS.items()}[self.method]
        return name if self.value is None else f"{name}:{self.value:g}"


YOUDEN = OperatingRule("youden")


def describe_calibration(calibration: dict[str, Any]) -> str:
    """A saved calibration's rule in words, with what it was applied to (for answers, model cards and reports)."""
    method = calibration.get("method", "youden")
    pooled = "pooled out-of-fold " if calibration.get("threshold_rule") == "pooled" else ""
    data = f"{calibration.get('n_threshold') or calibration.get('n_val')} {pooled}validation predictions"
    if method == "prevalence":
        observed, stated = calibration.get("validation_prevalence"), calibration.get("prevalence")
        prior = calibration.get("model_prior")
        name, source = (
            ("prevalence", "the validation data's") if stated is None else (f"prevalence:{stated:g}", "stated")
        )
        target = observed if stated is None else stated
        standing = "the validation prevalence" if prior is None else f"a {prior:g} prior (class-balanced training)"
        return (
            f"{name}: the Bayes rule for accuracy at a pneumonia prevalence of {target:.3f} ({source}), for "
            f"probabilities standing at {standing}"
        )
    if method == "target-sensitivity":
        target = calibration.get("target_sensitivity")
        return f"sensitivity:{target:g}: the highest threshold reaching sensitivity {target:g} on {data}"
    return f"youden: Youden's J on {data}"
