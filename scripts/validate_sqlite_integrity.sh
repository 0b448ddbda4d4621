#!/bin/sh
# Check sqlitesaver databases in CI without writing to them:
#     scripts/validate_sqlite_integrity.sh PATH [PATH ...]
# Runs `python -m sqlitesaver check "$@"` with ${PYTHON:-python3} and exits with its status:
# 0 every database is fine, 1 a problem was found, 2 bad usage or sqlitesaver not importable.
# See scripts/README.md.
set -eu

python=${PYTHON:-python3}

if [ "$#" -eq 0 ]; then
    echo "usage: $0 PATH [PATH ...]" >&2
    exit 2
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "$0: '$python' not found; set PYTHON to a Python that has sqlitesaver installed" >&2
    exit 2
fi

if ! "$python" -c 'import sqlitesaver.check' >/dev/null 2>&1; then
    echo "$0: sqlitesaver is not importable by '$python'; install it there" \
         "('$python -m pip install .' in a clone of sqlitesaver) or set PYTHON to a" \
         "Python that has it" >&2
    exit 2
fi

# exec: the check's exit status is this script's exit status.
exec "$python" -m sqlitesaver check "$@"
