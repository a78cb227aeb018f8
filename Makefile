# Two commands for a newcomer: `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3
DEMO_MODEL ?= ds2a/assets/demo/ds2a_tiny_synth.int8.onnx

.PHONY: demo test test-py38 install-runtime install-dev install-debian mutation

install-runtime:
	$(PYTHON) -m pip install -q -e '.[opencv]'

install-dev:
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e '.[opencv,train,export,calib,bench,trt,cu13,web,notify,serve,dev]'

# Debian packages the browser and MQTT tests drive (as root; elsewhere they skip with the reason)
install-debian:
	sh .ci/debian_packages.sh chromium chromium-driver mosquitto

demo: install-runtime
	$(PYTHON) -m ds2a inspect --model $(DEMO_MODEL) --source "demo://?frames=300" --headless \
	    --output runs/demo/inspect.mp4 --db runs/demo/inspect.sqlite --save-fail runs/demo/fail

test: install-dev install-debian
	$(PYTHON) -m pytest -q
	$(PYTHON) .ci/py38_tests.py

# the device-side tests under Python 3.8 (JetPack 5), where an interpreter exists; skips with the reason elsewhere
test-py38:
	$(PYTHON) .ci/py38_tests.py

# Mutation testing of the verdict and record code (docs/MUTATION.md; not in CI: about 20 minutes on 2 cores).
# mutmut (the dev extra) mutates a copy of the committed tree under runs/mutation, never the working tree.
MUTATION_DIR ?= runs/mutation
mutation:
	rm -rf $(MUTATION_DIR) && mkdir -p $(MUTATION_DIR)
	git archive HEAD | tar -x -C $(MUTATION_DIR)
	cd $(MUTATION_DIR) && $(PYTHON) -m mutmut run --max-children $${MUTATION_JOBS:-2}; \
	    $(PYTHON) -m mutmut export-cicd-stats && cat mutants/mutmut-cicd-stats.json && echo && \
	    $(PYTHON) -m mutmut results
