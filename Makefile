# Two commands on a fresh machine:  make run  (install + the workflow)  and  make test  (install + the
# system packages the tests need + the tests).
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
# Rules call `python scripts/...`: the venv's python must come first on PATH.
export PATH := $(BIN):$(PATH)
# Podman's settings for this project (runc, host network, no default nofile ulimit): a file here,
# nothing written to /etc/containers.
export CONTAINERS_CONF ?= $(abspath containers/containers.conf)
INSTALLED := $(VENV)/.installed
# The lock: the exact version of every package (make lock)
LOCK := constraints.txt
# Seconds per set-up step of the last `make test`, for the timing summary at the end of its pytest run
SETUP_TIMES := $(abspath $(VENV))/.setup-times

.PHONY: install run demo sweep-demo test lock ui lint clean pipeline-image

$(INSTALLED): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' -c $(LOCK)
	touch $@

install: $(INSTALLED)

run: install  ## the whole workflow on the default config (downloads CIFAR-10 once)
	snakemake --cores 4

demo: install  ## offline: synthetic data, small sizes
	snakemake --cores 4 --configfile config/demo.yaml

sweep-demo: install  ## offline: a sweep of four tiny trials on the demo data, the best shipped
	snakemake --cores 4 --configfile config/demo.yaml config/sweep-demo.yaml

# install, then the Debian packages the tests need (tests/setup_system.py: installs what is missing
# as root, else says what to install and those tests skip), then the whole suite
test:
	@start=$$(date +%s) && $(MAKE) --no-print-directory install \
		&& echo "install $$(($$(date +%s) - start))" >$(SETUP_TIMES)
	@start=$$(date +%s) && $(BIN)/python tests/setup_system.py \
		&& echo "system $$(($$(date +%s) - start))" >>$(SETUP_TIMES)
	CIFARFLOW_SETUP_TIMES=$(SETUP_TIMES) pytest

lock:  ## constraints.txt (and envs/*.yaml's pins) from a fresh resolve of pyproject.toml (KEEP=1: keep the lock's versions)
	$(PYTHON) tests/lockfile.py $(if $(KEEP),--keep)

ui: install  ## browse every run's params and metrics (MLflow's default store: ./mlflow.db)
	@echo "The runs table: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (MLflow 3.17 opens on its GenAI view otherwise; each run's end prints its experiment's link)"
	mlflow ui

# The pipeline image for snakemake --use-singularity (docs/hpc-and-containers.md), with Podman
# (else Docker): VARIANT=cuda (default) or cpu; BASE_IMAGE=... where Docker Hub is out of reach.
VARIANT ?= cuda
pipeline-image: install
	$(BIN)/python containers/pipeline/build.py --variant $(VARIANT) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE))

lint: install
	ruff check scripts tests bench containers tests/apptainer_via_podman
	snakefmt --check Snakefile rules
	snakemake --lint

clean:  ## remove outputs (keeps the venv and downloaded archives)
	rm -rf results/data results/audit results/train results/export results/quantize results/robustness results/sweep results/report logs benchmarks .snakemake
