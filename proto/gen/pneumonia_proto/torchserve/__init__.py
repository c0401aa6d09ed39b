"""TorchServe's gRPC inference API, generated from proto/pneumonia_proto/torchserve by scripts/gen_proto.py."""
