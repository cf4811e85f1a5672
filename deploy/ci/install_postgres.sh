#!/usr/bin/env bash
# CI: install Debian's PostgreSQL server so tests/test_deploy.py can start a real cluster.
# Idempotent; never fails the build: where it cannot install, the Postgres tests skip with a reason.
set -uo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
  echo "install_postgres: PostgreSQL server binaries already present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install_postgres: not root and no passwordless sudo; Postgres tests will be skipped" >&2
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null; then
  echo "install_postgres: no apt-get (not Debian/Ubuntu); Postgres tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# binaries only: no default cluster on port 5432 (the tests start their own on a free port)
$SUDO mkdir -p /etc/postgresql-common
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
if $SUDO apt-get update -qq \
  && $SUDO apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold postgresql >/dev/null; then
  echo "install_postgres: installed $(ls /usr/lib/postgresql)"
else
  echo "install_postgres: apt-get install postgresql failed; Postgres tests will be skipped" >&2
fi
exit 0
