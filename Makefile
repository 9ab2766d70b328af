# cnnbench: `make demo` runs the main job on the built-in data, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
# torch and torchvision as pinned here come from this machine's local wheel store.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: setup data demo test bench clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ] || [ -n "$$CNNBENCH_DATA" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) ; \
	else \
		echo "Fashion-MNIST is missing; install it with:"; \
		echo "  sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"; \
	fi

demo: setup
	$(BIN)/cnnbench models
	$(BIN)/cnnbench summary densenet
	@echo "Training our LeNet recipe (experiments/lenet.yaml) for 5 epochs (the full recipe is 10) on Fashion-MNIST:"
	$(BIN)/cnnbench train lenet --epochs 5 --quiet

test: setup
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/cnnbench bench deformconv

clean:
	rm -rf $(VENV) .pytest_cache
