# PostgreSQL for the persistence tests of `cport-mmo` (sourced by scripts/test).
# Installs Debian's `postgresql` when missing, starts a throwaway cluster owned by the
# `postgres` user (initdb refuses root) in a temporary directory on a free loopback port with
# trust authentication, exports CPORT_TEST_POSTGRES, and registers stopping and removing it.

pg_bin=""
for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && pg_bin="$d"
done
if [ -z "$pg_bin" ]; then
    apt_install postgresql
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && pg_bin="$d"
    done
fi
if [ -z "$pg_bin" ]; then
    echo "scripts/deps/postgres.sh: no initdb after installing postgresql" >&2
    return 1
fi

pg_user=postgres
if ! id "$pg_user" >/dev/null 2>&1; then
    pg_user=$(id -un)
fi
as_pg() {
    if [ "$(id -un)" = "$pg_user" ]; then
        "$@"
    else
        runuser -u "$pg_user" -- "$@"
    fi
}

pg_dir=$(mktemp -d /tmp/cport-pg.XXXXXX)
chown "$pg_user" "$pg_dir"
as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U cport --auth=trust --no-sync -E UTF8 >"$pg_dir/initdb.log" 2>&1 || {
    cat "$pg_dir/initdb.log" >&2
    return 1
}
CLEANUP+=("as_pg '$pg_bin/pg_ctl' -D '$pg_dir/data' -m immediate stop >/dev/null 2>&1; rm -rf '$pg_dir'")
# A loopback port below the kernel's ephemeral range (so the load tests' own connections do
# not take it between the check and the start) that nothing listens on (bash's /dev/tcp: a
# refused connection means free); if the start still fails (taken in between), another port.
eph_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
pg_port=""
for _ in $(seq 1 8); do
    p=$((10000 + RANDOM % (eph_low - 10000)))
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        continue
    fi
    # fsync off: a throwaway cluster (crash safety of the *server* is what the tests check; a
    # kill -9 of the game server is not a power loss of PostgreSQL).
    if as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $p -k $pg_dir -c fsync=off -c max_connections=200" \
        start >/dev/null; then
        pg_port=$p
        break
    fi
    echo "scripts/deps/postgres.sh: PostgreSQL did not start on port $p; trying another" >&2
done
if [ -z "$pg_port" ]; then
    echo "scripts/deps/postgres.sh: PostgreSQL did not start (8 ports tried); its log:" >&2
    cat "$pg_dir/server.log" >&2
    return 1
fi
as_pg "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U cport cport_test
export CPORT_TEST_POSTGRES="postgres://cport@127.0.0.1:$pg_port/cport_test"
# The test that stops PostgreSQL under a running game starts a cluster of its own with these.
export CPORT_TEST_PG_BIN="$pg_bin"
echo "scripts/deps/postgres.sh: PostgreSQL ($pg_bin) at $CPORT_TEST_POSTGRES"
