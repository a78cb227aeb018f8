"""Print the public surface of the importable `tensorrt` as JSON (run in a subprocess by wheels.py)."""
import json
import sys

import tensorrt as trt

classes, enums = {}, {}
for name in dir(trt):
    if name.startswith("_"):
        continue
    obj = getattr(trt, name)
    members = getattr(obj, "__members__", None)
    if isinstance(obj, type) and members is not None:
        enums[name] = {k: int(v) for k, v in members.items()}
    elif isinstance(obj, type):
        classes[name] = sorted(a for a in dir(obj) if not a.startswith("_"))
json.dump({"version": trt.__version__, "module": sorted(n for n in dir(trt) if not n.startswith("_")),
           "classes": classes, "enums": enums}, sys.stdout)
