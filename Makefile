# dynrec: `make demo` runs the main job, `make test` runs every check. Both build .venv first
# (`make install` builds only that).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DYNREC_DATA_DIR ?= $(abspath ../shared/data)

# torch from PyTorch's CPU index (a 183 MB wheel; PyPI's Linux torch is the CUDA build, which pulls
# several GB of CUDA libraries) whenever that index answers; otherwise pip takes what its own indexes
# hold. `make TORCH_INDEX= venv` skips it (a CUDA machine that wants PyPI's build).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: venv install demo test system-deps lint typecheck imports bench-pages clean

$(BIN)/dynrec: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	@if [ -n "$(TORCH_INDEX)" ] && $(BIN)/python -c "import urllib.request as u; u.urlopen('$(TORCH_INDEX)/torch/', timeout=10)" 2>/dev/null; then \
	  echo "$(BIN)/pip install -c constraints.txt --extra-index-url $(TORCH_INDEX) torch"; \
	  $(BIN)/pip install -q -c constraints.txt --extra-index-url $(TORCH_INDEX) torch; \
	else \
	  echo "$(BIN)/pip install -c constraints.txt torch   (pip's own indexes: $(if $(TORCH_INDEX),$(TORCH_INDEX) does not answer,TORCH_INDEX is empty))"; \
	  $(BIN)/pip install -q -c constraints.txt torch; \
	fi
	$(BIN)/pip install -q -c constraints.txt -e '.[all,dev]'
	@$(BIN)/python -c "import torch; print('torch', torch.__version__, '(CUDA ' + torch.version.cuda + ')' if torch.version.cuda else '(CPU only)')"
	touch $(BIN)/dynrec

venv: $(BIN)/dynrec

install: venv
	@echo "dynrec is installed in $(VENV): run 'source $(VENV)/bin/activate' to put dynrec on PATH"

demo: venv
	$(BIN)/python -m dynrec.cli.demo --dataset ml-100k

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m benchmarks.pages --check

bench-pages: venv
	$(BIN)/python -m benchmarks.pages

typecheck: venv
	$(BIN)/mypy

imports: venv
	$(BIN)/lint-imports

# The service suites run a real redis-server and chromium: installed when root + apt, else an error
# naming the command that installs them (never a pass with those tests skipped).
system-deps:
	./scripts/system-deps.sh

test: system-deps venv lint typecheck imports
	$(BIN)/pytest -x

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
