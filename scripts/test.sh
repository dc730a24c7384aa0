#!/usr/bin/env bash
# The whole test suite against real services: install what is missing, start a throwaway
# TimescaleDB and SeaweedFS on free loopback ports, run pytest, and always stop both.
# Exit status: pytest's. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd -P)
STATE_DIR="$REPO/.services/test-$$"
PREFECT_HOME_DIR=$(mktemp -d /tmp/rf-acquisition-prefect.XXXXXX)

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    bash scripts/services.sh down "$STATE_DIR" || true
    rm -rf "$STATE_DIR" "$PREFECT_HOME_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The layering (pyproject.toml [tool.importlinter]) holds before anything runs.
.venv/bin/lint-imports
bash scripts/services.sh install
bash scripts/services.sh up "$STATE_DIR"
set -a
# shellcheck disable=SC1091
. "$STATE_DIR/env"
set +a

# Flow tests run on Prefect's test harness with a private home, never the user's profile.
export PREFECT_HOME="$PREFECT_HOME_DIR"
export PREFECT_LOGGING_LEVEL=${PREFECT_LOGGING_LEVEL:-WARNING}
export RF_REQUIRE_SERVICES=1

rc=0
.venv/bin/python -m pytest "$@" || rc=$?
exit "$rc"
