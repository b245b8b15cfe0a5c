#!/usr/bin/env bash
# Tools the test suite needs beyond Python packages. `make test` runs this first; it is quick
# (one `command -v`) when everything is already there. Now: promtool, which checks and unit-tests
# deploy/prometheus/alerts.yml (tests/integration/test_observability_assets.py).
#
# promtool comes from Debian's `prometheus` package. Installing that package would also create a
# system user and start a Prometheus server on :9090, so only the promtool binary is taken out of
# it: `apt-get download` (signature-checked like any apt install), `dpkg-deb -x` into a temporary
# directory, promtool copied to DEST (default: .venv/bin, where the tests look first). Nothing is
# registered with dpkg and no service starts. Without apt-get, or when the download fails, it says
# why and exits 0: the test then skips locally and fails under CI=true.
#
#   tests/tools.sh [DEST]
set -euo pipefail

DEST=${1:-.venv/bin}
PACKAGE=prometheus

say() { echo "tests/tools.sh: $*" >&2; }

if [ -x "$DEST/promtool" ] || command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    say "promtool not found and no apt-get/dpkg-deb to fetch Debian's $PACKAGE package;"
    say "install promtool on PATH by hand (the promtool tests skip, or fail under CI=true)"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

download() { (cd "$work" && apt-get download -q "$PACKAGE" >/dev/null 2>&1); }

say "installing promtool from Debian's $PACKAGE package into $DEST"
if ! download; then
    # a fresh machine has no package lists yet (or stale ones): refresh them once
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -q >/dev/null 2>&1 || true
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n apt-get update -q >/dev/null 2>&1 || true
    fi
    if ! download; then
        say "could not download Debian's $PACKAGE package (no package lists, not root, or no"
        say "network to the Debian mirror); the promtool tests skip, or fail under CI=true"
        exit 0
    fi
fi

deb=$(ls "$work"/"$PACKAGE"_*.deb)
dpkg-deb -x "$deb" "$work/root"
if [ ! -x "$work/root/usr/bin/promtool" ]; then
    say "$(basename "$deb") has no usr/bin/promtool"
    exit 0
fi
mkdir -p "$DEST"
install -m 0755 "$work/root/usr/bin/promtool" "$DEST/promtool"
say "$("$DEST/promtool" --version 2>&1 | head -1)"
