"""The classifier service: a TorchServe handler serving a trained pneumonia classifier checkpoint."""
