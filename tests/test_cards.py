"""Model and dataset cards (shared.cards) say what a model is not for and quote training's own numbers."""

from __future__ import annotations

import pytest

from shared.cards import DATASETS_DESCRIBED, dataset_card, model_card
from shared.datasets import DATASETS

FINAL = {
    "arch": "resnet18",
    "dataset": "pneumoniamnist",
    "selected_fold": 2,
    "n_train_real": 453,
    "n_synthetic_pool": 300,
    "holdout": {"n": 1047, "n_positive": 777, "accuracy": 0.935, "sensitivity": 0.920, "specificity": 0.978,
                "auroc": 0.9895},
    "holdout_summary": {"ci95": {"accuracy": [0.922, 0.941], "specificity": [0.913, 1.005], "auroc": [0.979, 0.993]}},
    "calibration": {"temperature": 1.2708, "threshold": 0.5760, "method": "youden", "n_val": 227, "ece_before": 0.079,
                    "ece_after": 0.089},
    "operating_point": {"served": {"holdout_at_threshold": {"accuracy": 0.923, "sensitivity": 0.902,
                                                            "specificity": 0.981}}},
}  # fmt: skip


def test_a_model_card_quotes_the_served_model_and_its_calibration() -> None:
    card = model_card("augmented", FINAL, run="r1", cv={"average": {"accuracy": 0.919}})
    assert card.startswith("# Model card: pneumonia classifier, strategy augmented (run r1)")
    assert "**Not for clinical use.**" in card and "## Intended use" in card and "## Known failure modes" in card
    assert "1047 hold-out images (777 pneumonia)" in card
    assert "At the operating point (threshold 0.576): accuracy 92.3%, sensitivity 90.2%, specificity 98.1%" in card
    assert "specificity 97.8% (fold models' 95% CI 91.3% to 100.0%)" in card  # a rate's interval stops at 100%
    assert "AUROC 0.990 (fold models' 95% CI 0.979 to 0.993)" in card
    assert "Temperature 1.271, threshold 0.576 (youden), both fitted on validation data (227 images)" in card
    assert "a pool of 300 synthetic images" in card and "0 = normal, 1 = pneumonia" in card
    assert "cross-validation accuracy 91.9%, hold-out 93.5%" in card


def test_a_fold_ensembles_card_names_it_and_quotes_its_own_scores_under_shift() -> None:
    shift = {"auroc": 0.98, "accuracy": 0.90, "sensitivity": 0.93, "specificity": 0.85, "refused": 0.10}
    clean = {"auroc": 0.995, "accuracy": 0.96, "sensitivity": 0.95, "specificity": 0.97, "refused": 0.004}
    final = {
        **FINAL,
        "selected_fold": None,
        "final_model": {
            "kind": "fold-ensemble",
            "description": "fold-ensemble of 3 resnet18 models",
            "folds": [1, 2, 3],
        },
        "shifted": {"holdout": clean, "shifts": {"a@3": {**shift, "auroc": 0.5}}},  # the fold models' mean
        "served_shifted": {"holdout": clean, "shifts": {"a@3": shift, "b@3": {**shift, "auroc": 0.96}}},
    }
    card = model_card("baseline", final)
    assert "served model: fold-ensemble of 3 resnet18 models (folds 1, 2, 3 of the cross-validation)" in card
    assert "2 MedMNIST-C corruptions" in card and "the served model; clean hold-out in brackets" in card
    assert "AUROC 0.970 [0.995]" in card  # its own mean over the shifts, not the fold models'
    assert "each after the temperature fitted on its own validation fold" in card


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_has_a_card_with_its_licence_and_label_mapping(name: str) -> None:
    card = dataset_card(name)
    assert f"- Licence: {DATASETS_DESCRIBED[name]['licence']}" in card and "- Labels: " in card
    assert "never for validation" in card  # synthetic images stay out of everything that is measured


def test_the_rsna_card_says_that_lung_opacity_stands_in_for_pneumonia() -> None:
    assert "'Lung Opacity' (Target 1), which stands in for pneumonia" in dataset_card("rsna")
