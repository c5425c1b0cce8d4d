"""What the serving image carries: the model server and the modules it needs, and nothing else of cifarflow.

- server.py: KServe's ModelServer on one address, readiness, the repository extension, `serve`;
- model.py: the ONNX classifier as a KServe Model, and the human path (an image file in, classes out);
- http.py: HTTP hardening (body limit, decoding mends, the repository routes off) and our routes;
- inference.py: the exported graph's contract as ONNX Runtime runs it (export and evaluation use it too);
- images.py: opening an image within a pixel limit, as RGB uint8 32x32 (data preparation uses it too);
- logs.py: the one log format of every cifarflow program.

The image copies this package whole (cifarflow.engines.assemble_context), with scripts/serve.py, its
entry point: so no module here imports anything of cifarflow outside the package (relative imports
within it only; tests/test_serving.py checks). No torch. This file imports nothing, so that the
pipeline's modules import inference, images and logs without KServe.
"""
