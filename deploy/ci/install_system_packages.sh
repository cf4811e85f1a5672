#!/usr/bin/env bash
# CI: Debian packages some tests use: PostgreSQL's server (tests/deploy/test_deploy.py starts a real
# cluster), wrk (the load generator of `mlops bench serving`, tests/cli/test_bench_serving.py) and
# chromium (a real browser renders the gateway's /docs, tests/serving/test_serving.py).
# Idempotent; never fails the build: where it cannot install, those tests skip with a reason.
set -uo pipefail

PACKAGES=()
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
  echo "install_system_packages: PostgreSQL server binaries already present"
else
  PACKAGES+=(postgresql)
fi
command -v wrk >/dev/null && echo "install_system_packages: wrk already present" || PACKAGES+=(wrk)
command -v chromium >/dev/null && echo "install_system_packages: chromium already present" || PACKAGES+=(chromium)
if [ ${#PACKAGES[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install_system_packages: not root and no passwordless sudo; their tests will be skipped" >&2
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null; then
  echo "install_system_packages: no apt-get (not Debian/Ubuntu); their tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# binaries only: no default cluster on port 5432 (the tests start their own on a free port)
$SUDO mkdir -p /etc/postgresql-common
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
if $SUDO apt-get update -qq \
  && $SUDO apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold "${PACKAGES[@]}" >/dev/null; then
  echo "install_system_packages: installed ${PACKAGES[*]}"
else
  echo "install_system_packages: apt-get install ${PACKAGES[*]} failed; their tests will be skipped" >&2
fi
exit 0
