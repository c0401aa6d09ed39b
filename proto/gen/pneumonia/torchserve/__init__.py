"""TorchServe's gRPC inference API, generated from proto/pneumonia/torchserve by scripts/gen_proto.py."""
