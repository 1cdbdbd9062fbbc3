# nats-server for the cluster's bus tests (cluster/tests/bus.rs and the cluster tests after
# it): Debian's `nats-server` package when no nats-server is installed; exports
# CPORT_TEST_NATS_SERVER, the program the tests start (cport_testkit::nats). Nothing to start
# or stop here: each test starts its own server on a free loopback port and kills it.
# Sourced by scripts/test (set -euo pipefail; apt_install defined there).

cport_find_nats() {
    local c
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    for c in "${CPORT_TEST_NATS_SERVER:-}" nats-server /usr/sbin/nats-server /usr/local/sbin/nats-server; do
        [ -n "$c" ] || continue
        if command -v "$c" >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

if ! CPORT_TEST_NATS_SERVER="$(cport_find_nats)"; then
    # Where systemd runs, the package also starts its own service on port 4222: harmless,
    # the tests use other ports.
    echo "scripts/deps/nats.sh: installing Debian's nats-server (for the cluster's bus)"
    apt_install nats-server
    CPORT_TEST_NATS_SERVER="$(cport_find_nats)" || {
        echo "scripts/deps/nats.sh: nats-server installed but not found (PATH, /usr/sbin)" >&2
        return 1
    }
fi
if ! "$CPORT_TEST_NATS_SERVER" --version >/dev/null 2>&1; then
    echo "scripts/deps/nats.sh: $CPORT_TEST_NATS_SERVER does not run" >&2
    return 1
fi
export CPORT_TEST_NATS_SERVER
echo "scripts/deps/nats.sh: CPORT_TEST_NATS_SERVER=$CPORT_TEST_NATS_SERVER ($("$CPORT_TEST_NATS_SERVER" --version 2>&1 | head -1))"
unset -f cport_find_nats
