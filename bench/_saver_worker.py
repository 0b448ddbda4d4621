"""A writer process for bench/run.py: one Saver, M threads putting the 4 KiB state.

Started by the parent with ``subprocess`` (a fresh interpreter, never a fork: a Saver must not
cross ``fork()``), driven over stdin/stdout with :mod:`_common`'s line protocol:

- ``{"cmd": "init", "db", "threads", "name", "states", "metadata"}`` opens the Saver (the parent
  has created the file) and answers ``{"ready": true}``, or the error by type if opening failed;
- ``{"cmd": "put", "until"}`` runs every thread until the shared monotonic deadline and answers
  the :class:`_common.Outcome` (operations, errors by exception type);
- ``{"cmd": "quit"}`` or end of input closes the Saver and exits.

Each thread writes its own thread id, as a server thread serving its own conversation would.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from _common import Channel, Outcome, run_threads, serve

from sqlitesaver import Saver


def main() -> int:
    channel = Channel.for_worker()
    init = channel.receive()
    if init is None:
        return 0
    with open(init["states"], encoding="utf-8") as f:
        state = json.load(f)["small"]
    metadata = init["metadata"]
    try:
        saver = Saver(init["db"])
    except Exception as exc:  # reported, not raised: the parent counts it against the row
        channel.send({"ready": False, "errors": {type(exc).__name__: 1},
                      "first_error": f"{type(exc).__name__}: {exc}"[:400]})
        return 1
    # Never both SQLite libraries in one process (see _common); checked, not assumed.
    channel.send({"ready": True, "pid": os.getpid(), "sqlite3_loaded": "sqlite3" in sys.modules})

    def put_op(thread_id: str):
        put = saver.put

        def op() -> None:
            put(thread_id, state, metadata=metadata)
        return op

    ops = [put_op(f"{init['name']}-t{i:02d}") for i in range(init["threads"])]

    def put(message: dict[str, Any]) -> dict[str, Any]:
        outcome: Outcome = run_threads(ops, until=message["until"])
        return outcome.to_json()

    serve(channel, {"put": put}, saver.close)
    return 0


if __name__ == "__main__":
    sys.exit(main())
