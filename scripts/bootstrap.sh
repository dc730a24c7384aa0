#!/usr/bin/env bash
# Create or update the project's virtual environment on a fresh machine.
# Usage: scripts/bootstrap.sh [PYTHON] [VENV]
# Debian's python3 ships without venv/ensurepip: install python3-venv when needed (root).
set -euo pipefail
PYTHON=${1:-python3}
VENV=${2:-.venv}
cd "$(dirname "$0")/.."

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "rf-acquisition needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    minor=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    echo "installing python${minor}-venv with apt" >&2
    # A freshly booted VM's apt-daily / unattended-upgrades may hold the lock: wait for it.
    apt=(apt-get -o DPkg::Lock::Timeout=600)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" -q update >&2
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -q "python${minor}-venv" >&2 \
        || DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -q python3-venv >&2
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test]'
