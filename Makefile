# GamePipeline: the two commands of the README's Quick start, and the tools behind them.
# Every target installs what it needs first (virtualenv, Docker engine, stand-in images).

VENV     ?= .venv
PY       := $(VENV)/bin/python
TEMPLATE ?= demo

.PHONY: demo demo-stop test unit integration lint format proto images docker venv clean chromium

demo: venv images
	$(PY) scripts/demo.py --template $(TEMPLATE)

demo-stop: venv
	$(PY) scripts/demo.py --stop

test: lint images chromium
	$(PY) -m pytest tests

unit: venv
	$(PY) -m pytest tests/unit

integration: venv images chromium
	$(PY) -m pytest tests/integration

lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

proto: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/gen-proto.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/bootstrap.sh
	VENV=$(VENV) scripts/bootstrap.sh

docker:
	scripts/docker-up.sh

chromium:
	scripts/ensure-chromium.sh

images: docker
	scripts/build-images.sh

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (issue 8): prints a table, writes benchmarks/results.json; PROFILE=1 also
# records py-spy profiles in benchmarks/profiles/. benchmarks/RESULTS.md is the record.
.PHONY: bench
bench: venv images $(VENV)/.bench-installed
	$(PY) -m benchmarks $(if $(PROFILE),--profile) $(if $(ROUNDS),--rounds $(ROUNDS)) $(if $(ONLY),--only $(ONLY))

$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

# Node provisioning (issue 7): ruff/mypy on the collection's Python, ansible-lint
# (production profile), collection build, inventory plugin tests, the molecule scenario.
.PHONY: test-provisioning
test-provisioning: venv docker
	VENV=$(VENV) scripts/test-provisioning.sh

# Soak (issue 4, F9/F10): the idle-stream keepalive check for an hour and a thousand runs
# in a row on one node, the long versions of two tests `make test` runs briefly. The two
# run side by side (about an hour); the exit code is non-zero if either failed.
.PHONY: soak
soak: venv images
	GAMEPIPELINE_SOAK_IDLE_SECONDS=3600 $(PY) -m pytest -s tests/integration/test_reliability_keepalive.py & \
	GAMEPIPELINE_SOAK_RUNS=1000 $(PY) -m pytest -s tests/integration/test_reliability_many_runs.py; \
	runs=$$?; wait $$!; idle=$$?; exit $$((runs | idle))
