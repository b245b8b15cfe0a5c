"""Shared pieces of the macro benchmark (bench/run.py) and bench/micro/instructions.py.

env       tools, versions, machine facts, free ports, RLIMIT_NOFILE, CPU pinning plan
targets   config generators and process control: backend nginx, Isekai, nginx proxy, HAProxy
load      wrk Lua scripts, one wrk run, CPU/RSS accounting of the process under test
report    medians, JSON, Markdown table with ratios to nginx (and to plain small_get), PNG chart
variants  Isekai config variants: policies, metrics off, tracing, access log, request log
otlp_sink the OTLP/HTTP receiver the tracing scenarios export to (a process of its own)
"""
