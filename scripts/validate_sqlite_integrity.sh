#!/bin/sh
# Check sqlitesaver databases in CI without writing to them:
#     scripts/validate_sqlite_integrity.sh PATH [PATH ...]
# Runs `python -m sqlitesaver check "$@"` and exits with its status:
# 0 every database is healthy; 1 damage was found in at least one (this wins over 2);
# 2 bad usage, a path that is missing, unreadable or not a sqlitesaver database (another
# application's SQLite file, a text or empty file), a database of a newer sqlitesaver, or
# no Python with sqlitesaver was found.
#
# Which Python: $PYTHON if it is set (and only that one); otherwise the first of these that can
# import sqlitesaver: the active virtualenv ($VIRTUAL_ENV/bin/python), the virtualenv of the
# clone this script is in (.venv/bin/python, what the README's set-up creates), python3. The one
# used is named on stderr.
#
# With no PATH: one simulated crash-recovery cycle on a temporary database, reported in a few
# lines: `python -m sqlitesaver.torture --iterations 1` (a writer is SIGKILLed at a random
# moment, the database is reopened with recovery and verified), then `python -m sqlitesaver
# check` on what it left. Exit 0 if both passed (the temporary directory is removed), else 1
# (the directory is kept, its path and both outputs printed). See scripts/README.md.
set -eu

has_sqlitesaver() {
    command -v "$1" >/dev/null 2>&1 && "$1" -c 'import sqlitesaver.check' >/dev/null 2>&1
}

if [ -n "${PYTHON:-}" ]; then
    python=$PYTHON
    if ! command -v "$python" >/dev/null 2>&1; then
        echo "$0: '$python' (from \$PYTHON) not found; set PYTHON to a Python that has" \
             "sqlitesaver installed" >&2
        exit 2
    fi
    if ! has_sqlitesaver "$python"; then
        echo "$0: sqlitesaver is not importable by '$python' (from \$PYTHON); install it there" \
             "('$python -m pip install .' in a clone of sqlitesaver) or set PYTHON to a" \
             "Python that has it" >&2
        exit 2
    fi
    echo "$0: using $python (from \$PYTHON)" >&2
else
    repo=$(cd "$(dirname "$0")/.." && pwd)
    python=
    tried=
    for candidate in ${VIRTUAL_ENV:+"$VIRTUAL_ENV/bin/python"} "$repo/.venv/bin/python" python3
    do
        tried="$tried '$candidate'"
        if has_sqlitesaver "$candidate"; then
            python=$candidate
            break
        fi
    done
    if [ -z "$python" ]; then
        echo "$0: no Python with sqlitesaver found (tried$tried); install it as the README" \
             "says ('python3 -m venv .venv && .venv/bin/pip install .' in the clone) or set" \
             "PYTHON to a Python that has it" >&2
        exit 2
    fi
    echo "$0: using $python (the first of$tried that has sqlitesaver)" >&2
fi

if [ "$#" -gt 0 ]; then
    # exec: the check's exit status is this script's exit status.
    exec "$python" -m sqlitesaver check "$@"
fi

# --- no PATH: one crash-recovery cycle on a temporary database --------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sqlitesaver-validate.XXXXXX")
trap 'rm -rf "$tmp"; exit 130' INT TERM
db="$tmp/db"
echo "no PATH given: one simulated crash-recovery cycle (write, SIGKILL, recover, validate)"
echo "  database:  $db"

torture=0
"$python" -m sqlitesaver.torture --iterations 1 --db "$db" >"$tmp/torture.out" 2>&1 \
    || torture=$?
# The harness's line for the kill, and its last line (verdict and seed to reproduce it).
kill_line=$(grep -E '^ *1/1 ' "$tmp/torture.out" | head -n 1 | sed 's/^ *//' || true)
verdict=$(tail -n 1 "$tmp/torture.out")
if [ "$torture" -eq 0 ]; then
    echo "  write, SIGKILL, recover: passed (python -m sqlitesaver.torture --iterations 1): $verdict"
else
    echo "  write, SIGKILL, recover: FAILED, exit $torture (python -m sqlitesaver.torture" \
         "--iterations 1): $verdict"
fi
[ -z "$kill_line" ] || echo "    $kill_line"

check=0
if [ -e "$db" ]; then
    "$python" -m sqlitesaver check "$db" >"$tmp/check.out" 2>&1 || check=$?
    result=$(tail -n 1 "$tmp/check.out" | sed 's/^ *=> *//')
else
    check=2
    result="no database was left to check"
    : >"$tmp/check.out"
fi
if [ "$check" -eq 0 ]; then
    echo "  validate: passed (python -m sqlitesaver check): $result"
else
    echo "  validate: FAILED, exit $check (python -m sqlitesaver check): $result"
fi

if [ "$torture" -eq 0 ] && [ "$check" -eq 0 ]; then
    rm -rf "$tmp"
    echo "ok: the cycle ran and the check passed (temporary directory removed)"
    exit 0
fi
echo "--- python -m sqlitesaver.torture --iterations 1 --db $db"
cat "$tmp/torture.out"
echo "--- python -m sqlitesaver check $db"
cat "$tmp/check.out"
echo "FAILED: the database and both outputs are kept in $tmp"
exit 1
