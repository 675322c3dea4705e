"""The model runtime: ``contract`` (what sessions and the runner provide), ``runner``, ``watchdog``,
``engines/`` (ONNX Runtime, OpenVINO), ``providers``, ``gpu`` (CUDA/TensorRT options), ``buckets``."""
