"""Grad-CAM for the analysis: the implementation lives in shared.gradcam (the classifier service uses it too)."""

from shared.gradcam import gradcam_samples, last_conv_layer

__all__ = ["gradcam_samples", "last_conv_layer"]
