#!/usr/bin/env bash
# The browser for tests/test_browser.py (JupyterLab driven by Selenium in headless Chromium): Debian's chromium
# and its matching chromedriver. CI (.ci/run, as root) calls it; on a learner's machine the browser test skips
# when there is no browser, so ./course test does not need this.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
sudo=""
[[ $(id -u) == 0 ]] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
echo "[browser] $(chromium --version 2>/dev/null); $(chromedriver --version | cut -d" " -f1-2)"
