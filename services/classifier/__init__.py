"""The classifier service: TorchServe serving a trained pneumonia classifier over REST and gRPC.

handler.py      the TorchServe handler packed into every .mar (PNG/JPEG/DICOM in; answers, Grad-CAM PNGs out)
archive.py      a checkpoint -> <model_name>.mar (`pneumonia archive-classifier`, `make mar`)
config.py       ClassifierConfig from PNEUMONIA_CLASSIFIER_* variables
torchserve.py   TorchServe as a managed process (config.properties, start, ready, keys, stop)
client.py       ClassifierClient (REST, gRPC, management) and register_from_store
__main__.py     `python -m services.classifier`: TorchServe in the foreground
"""
