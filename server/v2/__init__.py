"""The Open Inference Protocol ("KServe v2") surfaces: gRPC `inference.GRPCInferenceService` and HTTP/REST."""
