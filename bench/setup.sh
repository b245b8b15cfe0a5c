#!/usr/bin/env bash
# Install what bench/ needs on a fresh Debian/Ubuntu machine: wrk, nginx (light), HAProxy,
# valgrind (for bench/micro/instructions.py) and taskset; then the Python side of the `bench`
# extra (matplotlib, psutil) into $PYTHON (default: python3). Safe to run again: it installs
# only what is missing. bench/run.py runs it by itself when a tool is missing.
set -euo pipefail

PYTHON=${PYTHON:-python3}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

packages=()
have wrk || packages+=(wrk)
have nginx || packages+=(nginx-light)
have haproxy || packages+=(haproxy)
have valgrind || packages+=(valgrind)
have taskset || packages+=(util-linux)

if [ ${#packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "bench/setup.sh: need root (or sudo) to install: ${packages[*]}" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "bench/setup.sh: no apt-get; install by hand: ${packages[*]}" >&2
        exit 1
    fi
    echo "bench/setup.sh: installing ${packages[*]}"
    "${SUDO[@]}" apt-get update -q
    if ! DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends \
        "${packages[@]}"; then
        # newer Debian releases dropped the nginx-light flavour: take plain nginx instead
        packages=("${packages[@]/nginx-light/nginx}")
        DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends \
            "${packages[@]}"
    fi
fi

missing_py=()
"$PYTHON" -c "import matplotlib" 2>/dev/null || missing_py+=("matplotlib>=3.7")
"$PYTHON" -c "import psutil" 2>/dev/null || missing_py+=("psutil>=5.9")
if [ ${#missing_py[@]} -gt 0 ]; then
    echo "bench/setup.sh: pip-installing ${missing_py[*]} into $PYTHON"
    "$PYTHON" -m pip install --quiet "${missing_py[@]}"
fi

for tool in wrk nginx haproxy valgrind taskset; do
    have "$tool" || { echo "bench/setup.sh: $tool still missing" >&2; exit 1; }
done
echo "bench/setup.sh: ready (wrk, nginx, haproxy, valgrind, taskset, matplotlib, psutil)"
