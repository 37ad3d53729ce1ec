#!/usr/bin/env bash
# Puts Prometheus's promtool in .venv/bin unless one is on PATH: it checks and unit-tests the alerting rules
# (deploy/prometheus; tests/unit/test_alerts.py skips without it). Taken from Debian's prometheus package,
# unpacked, not installed: installing it would start a Prometheus server. Needs apt-get; where the package
# lists know no prometheus yet, it runs `apt-get update` (which rewrites them; nothing else is touched).
#
#   bash scripts/ensure_promtool.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=.venv/bin/promtool
if command -v promtool >/dev/null || [[ -x "$target" ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    echo "ensure_promtool: no apt-get here: install Prometheus's promtool on PATH" >&2
    exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
download() { (cd "$tmp" && apt-get download prometheus) >/dev/null 2>&1; }
# A machine whose package lists were never fetched knows no prometheus package yet.
download || { apt-get update -qq >/dev/null 2>&1 && download; } || {
    echo "ensure_promtool: apt-get could not download the prometheus package" >&2
    exit 1
}
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/unpacked"
install -D -m 0755 "$tmp/unpacked/usr/bin/promtool" "$target"
echo "ensure_promtool: $("$target" --version 2>&1 | head -1) in $target" >&2
