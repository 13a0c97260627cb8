#!/usr/bin/env bash
# `make demo`: two gateways in network namespaces and one tunnel from the database (scripts/demo.py says
# which parts exist yet). Needs root; leaves no namespace, daemon or temp file behind.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/demo.py "$@"
