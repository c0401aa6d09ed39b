"""Generated gRPC contracts of the pneumonia services (scripts/gen_proto.py)."""
