"""`ds2a doctor`: what this machine can run (GPU, TensorRT, CUDA layers, OpenCV, cameras, a model).

`probe` gathers the facts, `model_check` answers "will this model load here", `command` prints
them and sets the exit code, `smoke` runs the checks that need real hardware (`--smoke`).
Torch-free and Python 3.8 like the rest of the device side.
"""
