#!/usr/bin/env bash
# Debian's Chromium for the status page's browser test (tests/integration/api/test_status_page.py),
# installed when missing. Playwright's Python package drives it at /usr/bin/chromium; it never
# downloads a browser of its own (`playwright install` is never run).
set -euo pipefail
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null; then
    # Not fatal here: the browser test fails loudly with the same message.
    echo "warning: $CHROMIUM is missing and this user cannot install it;" \
         "run 'sudo apt-get install -y chromium' (the status page test fails until then)" >&2
    exit 0
fi
echo "installing Debian's chromium (for the status page test) ..." >&2
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq && apt-get install -y -qq chromium > /dev/null; then
    "$CHROMIUM" --version
else
    # The rest of the suite still runs; the browser test fails with the reason.
    echo "warning: installing chromium failed (see above); the status page test will fail" >&2
fi
