"""The classifier service: a trained pneumonia classifier over REST and gRPC, served by TorchServe or over the Open
Inference Protocol (KServe v2) by KServe's model server; both run shared.serving.predictor.

archive.py      `pneumonia archive-classifier` (`make mar`): a checkpoint -> <model_name>.mar, built by
                shared.serving.archive with the handler it packs (shared/serving/handler.py)
config.py       ClassifierConfig from PNEUMONIA_CLASSIFIER_* variables
torchserve.py   TorchServe as a managed process (config.properties, start, ready, keys, stop)
client.py       ClassifierClient (REST, gRPC, management) and register_from_store
__main__.py     `python -m services.classifier`: TorchServe in the foreground
oip.py          `python -m services.classifier.oip`: the v2 runtime (kserve.ModelServer with our auth and models)
oip_models.py   its settings (PNEUMONIA_OIP_*), tensor names and model directory, importable without kserve
"""
