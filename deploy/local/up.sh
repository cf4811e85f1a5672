#!/usr/bin/env bash
# Quick start 1: install into .venv (first time) and start the local platform with the flights demo.
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/local/install.sh
exec .venv/bin/mlops demo "$@"
