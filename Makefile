# Two commands on a fresh machine:  make run  (install + the workflow)  and  make test.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
# Rules call `python scripts/...`: the venv's python must come first on PATH.
export PATH := $(BIN):$(PATH)
INSTALLED := $(VENV)/.installed

.PHONY: install run demo sweep-demo test ui lint clean pipeline-image

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(INSTALLED)

run: install  ## the whole workflow on the default config (downloads CIFAR-10 once)
	snakemake --cores 4

demo: install  ## offline: synthetic data, small sizes
	snakemake --cores 4 --configfile config/demo.yaml

sweep-demo: install  ## offline: a sweep of four tiny trials on the demo data, the best shipped
	snakemake --cores 4 --configfile config/demo.yaml config/sweep-demo.yaml

test: install  ## the whole test suite
	pytest

ui: install  ## browse every run's params and metrics (MLflow's default store: ./mlflow.db)
	mlflow ui

# The pipeline image for snakemake --use-singularity (README, "Every rule in a container"), with Podman
# (else Docker): VARIANT=cuda (default) or cpu; BASE_IMAGE=... where Docker Hub is out of reach.
VARIANT ?= cuda
pipeline-image: install
	$(BIN)/python containers/pipeline/build.py --variant $(VARIANT) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE))

lint: install
	ruff check scripts tests bench containers tests/apptainer_via_podman
	snakefmt --check Snakefile rules
	snakemake --lint

clean:  ## remove outputs (keeps the venv and downloaded archives)
	rm -rf results/data results/train results/export results/quantize results/sweep results/report logs benchmarks .snakemake
