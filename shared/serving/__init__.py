"""Serving a trained classifier, shared by the trainer (which packs the archive) and the classifier service's two
runtimes: TorchServe (services.classifier) and the Open Inference Protocol / KServe v2 (services.classifier.oip).

predictor.py the serving logic both runtimes share, free of any framework: load a checkpoint or export; decode
             PNG/JPEG/DICOM; plausibility gate; preprocess; infer; calibrated answers; Grad-CAM PNGs
archive.py   a checkpoint or its export -> <model_name>.mar holding handler.py and the batching settings
handler.py   the TorchServe handler packed into every .mar: a thin adapter over predictor.py
"""
