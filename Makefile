# Two commands set everything up on a fresh machine:
#   make run   -> create .venv (first time), curate the default manifest (and pretrain when asked)
#   make test  -> create .venv (first time), run the test suite
#
# TORCH_SPEC overrides how torch is installed, e.g.
#   make run TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu"
# The default pair is the one that installs cleanly on this workplace's machines
# (a CUDA build that also runs on the CPU).

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
MANIFEST   ?= data_manifest.yaml
PYTEST_ARGS ?=

BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE = 1
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS = 120
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: run test venv clean figures study study-ablation lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install --no-cache-dir $(TORCH_SPEC)
	$(BIN)/pip install --no-cache-dir -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/softcon curate $(MANIFEST)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# The loss study (docs/study.md): PRESET=cpu (under 60 min on 2 cores) or gpu (one GPU); resumable.
PRESET ?= cpu

study: $(STAMP)
	$(BIN)/softcon study --preset $(PRESET)

# The CPU study's ablation (docs/study_ablation.md): one knob at a time around SoftCon; reuses the study's archive.
study-ablation: $(STAMP)
	$(BIN)/softcon study configs/study_cpu_ablation.yaml

# The README's figures (docs/figures/*.png), from the archive and run `make run` makes; every figure of
# both goes to output/figures/ (softcon plot labels|run), a few small ones are copied to docs/figures/.
FIGURE_ARCHIVE ?= output/ssl4eo_s12_ml_mini.zarr
FIGURE_RUN     ?= runs/softcon-mini
FIGURE_DPI     ?= 80
DOC_FIGURES    := labels/class_frequencies labels/cooccurrence labels/world_map run/similarity

figures: $(STAMP)
	$(BIN)/softcon plot labels $(FIGURE_ARCHIVE) --out output/figures/labels --dpi $(FIGURE_DPI)
	$(BIN)/softcon plot run $(FIGURE_RUN) --out output/figures/run --dpi $(FIGURE_DPI)
	mkdir -p docs/figures
	for f in $(DOC_FIGURES); do cp output/figures/$$f.png docs/figures/; done

clean:
	rm -rf $(VENV) .prefect build *.egg-info
