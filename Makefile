# The two README commands: `make demo` (set up + main job) and `make test` (set up + tests).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
OUT ?= out

.PHONY: install demo demo-quick defend-demo test lint cuda-check bench bench-install

# Build requirements first (the extension is built with --no-build-isolation against the pinned
# CPU torch), then the package with its data and test extras. gan-face-generate goes in without
# its dependencies: they pull wandb and a torchvision that breaks beside the CPU torch.
# pip's resolver then prints "gan-face-generate 1.1.1 requires ... which is not installed":
# expected and harmless, the package only ships the weights we load.
# A stamp file skips the install (and the C++ build) until the sources or metadata change.
STAMP := .install.stamp
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu)

install: $(STAMP)

$(STAMP): $(SOURCES)
	$(PIP) install --quiet "torch==2.13.0" "setuptools>=64" wheel "pybind11>=2.12" ninja
	$(PIP) install --quiet --no-deps "gan-face-generate==1.1.1"
	$(PIP) install --quiet --no-build-isolation -e ".[data,test]"
	@touch $(STAMP)

demo: install
	$(PYTHON) -m lli_fast.cli demo --out $(OUT)/demo

demo-quick: install
	$(PYTHON) -m lli_fast.cli demo --quick --out $(OUT)/demo-quick

defend-demo: install
	$(PYTHON) -m lli_fast.cli defend-demo --out $(OUT)/defense

test: install
	$(PYTHON) -m pytest -ra tests

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

cuda-check:
	bash scripts/check_cuda.sh

bench-install: install
	$(PIP) install --quiet "torchrl==0.14.1"

bench: bench-install
	$(PYTHON) -m pytest bench --benchmark-only --benchmark-columns=mean,median,stddev,rounds -q
