#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is at /usr/bin/chromium for the browser tests (Playwright drives it;
# we never run `playwright install`, which downloads browsers from a CDN that CI cannot reach).
# Always exits 0: where Chromium cannot be installed, the browser tests skip and say why.
set -u
CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "ensure_chromium: $CHROMIUM present ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_chromium: $CHROMIUM missing and not root; install it with: sudo apt-get install -y chromium" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: $CHROMIUM missing and apt-get not available (not Debian/Ubuntu); browser tests will skip" >&2
    exit 0
fi

echo "ensure_chromium: installing Debian package 'chromium' with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq; then
    echo "ensure_chromium: apt-get update failed (no package mirror reachable?); browser tests will skip" >&2
    exit 0
fi
if ! apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; then
    echo "ensure_chromium: apt-get install chromium failed; browser tests will skip" >&2
    exit 0
fi
if [ -x "$CHROMIUM" ]; then
    echo "ensure_chromium: installed $("$CHROMIUM" --version 2>/dev/null)"
else
    echo "ensure_chromium: package installed but $CHROMIUM is still missing; browser tests will skip" >&2
fi
exit 0
