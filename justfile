# qgjob tasks. `just --list` shows them; the venv is the README's.

venv := ".venv/bin/"

# Bring up the whole system on the embedded default and run the demo workload.
up *ARGS:
    {{venv}}qgjob up {{ARGS}}

# The whole test suite (unit, integration, acceptance, lint).
test *ARGS:
    {{venv}}pytest {{ARGS}}

# ruff, formatting, mypy --strict and the import layers.
lint:
    {{venv}}ruff check .
    {{venv}}ruff format --check .
    {{venv}}mypy
    {{venv}}lint-imports

# Throughput and latency figures, each beside the raw NATS figure of the same run.
bench:
    {{venv}}python -m tests.bench.submit_bench

# Scheduling figures: one workload through the scheduler and a naive FIFO, against lower bounds.
bench-schedule *ARGS:
    {{venv}}python -m tests.bench.schedule_bench {{ARGS}}
