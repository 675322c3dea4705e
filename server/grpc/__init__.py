"""The gRPC front ends: emotion.v1 and the Open Inference Protocol."""
