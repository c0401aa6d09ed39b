"""pneumonia.v1 messages and stubs, generated from proto/pneumonia_proto/v1 by scripts/gen_proto.py."""
