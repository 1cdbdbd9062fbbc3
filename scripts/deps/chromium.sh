# Chromium for the browser test of the live view (cli/tests/web_browser.rs): Debian's
# `chromium` package when no Chromium is installed; exports CPORT_TEST_CHROMIUM, which the
# test reads (it fails, naming scripts/test, when it finds no browser). Nothing to start or
# stop: the test runs its own headless browser.
# Sourced by scripts/test (set -euo pipefail; apt_install defined there).

cport_find_chromium() {
    local c
    for c in "${CPORT_TEST_CHROMIUM:-}" chromium chromium-browser google-chrome google-chrome-stable; do
        [ -n "$c" ] || continue
        if command -v "$c" >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

if ! CPORT_TEST_CHROMIUM="$(cport_find_chromium)"; then
    echo "scripts/deps/chromium.sh: installing Debian's chromium (for the live view's browser test)"
    apt_install chromium
    CPORT_TEST_CHROMIUM="$(cport_find_chromium)" || {
        echo "scripts/deps/chromium.sh: chromium installed but not found on PATH" >&2
        return 1
    }
fi
export CPORT_TEST_CHROMIUM
echo "scripts/deps/chromium.sh: CPORT_TEST_CHROMIUM=$CPORT_TEST_CHROMIUM ($("$CPORT_TEST_CHROMIUM" --version 2>/dev/null | head -1))"
unset -f cport_find_chromium
