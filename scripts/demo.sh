#!/usr/bin/env bash
# The built-in world, end to end, as plain llgbm commands (run by `make demo`).
# Each step reuses finished work when run again.
set -euo pipefail
cd "$(dirname "$0")/.."

llgbm config validate
llgbm data list
