"""The classifier service: TorchServe serving a trained pneumonia classifier over REST and gRPC.

archive.py      `pneumonia archive-classifier` (`make mar`): a checkpoint -> <model_name>.mar, built by
                shared.serving.archive with the handler it packs (shared/serving/handler.py)
config.py       ClassifierConfig from PNEUMONIA_CLASSIFIER_* variables
torchserve.py   TorchServe as a managed process (config.properties, start, ready, keys, stop)
client.py       ClassifierClient (REST, gRPC, management) and register_from_store
__main__.py     `python -m services.classifier`: TorchServe in the foreground
"""
