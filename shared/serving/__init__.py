"""Serving a trained classifier with TorchServe, shared by the trainer (which packs the archive) and the classifier
service (which runs TorchServe on it).

archive.py   a checkpoint or its export -> <model_name>.mar holding handler.py and the batching settings
handler.py   the TorchServe handler packed into every .mar (PNG/JPEG/DICOM in; answers, Grad-CAM PNGs out)
"""
