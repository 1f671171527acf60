#!/usr/bin/env bash
# Install headless Chromium and its WebDriver (Debian packages) for the report's
# browser test. Idempotent and quiet; never fails the caller: without them the
# browser test skips with a message saying so.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: no apt-get here; install chromium and chromedriver by hand" >&2
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
        echo "install_browser.sh: not root; install chromium and chromium-driver by hand" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >/tmp/install_browser.log 2>&1; then
    echo "install_browser.sh: could not install chromium (see /tmp/install_browser.log); the browser test will skip" >&2
fi
exit 0
