"""Test doubles and tiny artefacts shared by the test files (fixtures over them: tests/conftest.py).

- segmenter.py: ThresholdSegmenter, a Segmenter without a network (dark pixels are damage);
- onnx_models.py: tiny ONNX graphs in our convention whose answer numpy can compute;
- records.py: reading a records database the way another process would.
"""
