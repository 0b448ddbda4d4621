"""Signals deferred across the write path's critical sections.

Python runs a signal's handler (``KeyboardInterrupt`` for SIGINT, or whatever a program's own
handler raises) in the main thread between any two bytecodes, including inside ``finally``
blocks, right after a lock was acquired and before the code that releases it is entered, or
between a COMMIT returning and the flag that acknowledges it. No ``try``/``finally`` can make
such a section whole, so the group-commit protocol runs its few unsplittable sections inside
:class:`deferred`: while one runs in the main thread, the Python-level handler of each signal in
:data:`DEFERRED_SIGNALS` is swapped for a recorder, and when the section ends the original
handlers are put back and called for the signals that arrived, in order (if one raises, those
after it are still called, each once: :func:`_run_held`). A ``KeyboardInterrupt`` therefore
arrives just after the section instead of inside it.

What it covers and what not:

* Only the main thread runs signal handlers, so other threads have nothing to defer and pay
  only an identity check.
* Exceptions raised into a thread by ``PyThreadState_SetAsyncExc`` cannot be deferred from
  Python. The write path is built to survive one such exception at any line (tested line by
  line in ``tests/test_interrupts.py``): see ``sqlitesaver/sqlite/transaction.py``.
* Sections must not block for long (they would delay Ctrl-C): the write path keeps waits for
  another thread (the write lock, a batch's COMMIT) outside them.
* While a section runs, ``signal.getsignal()`` in the main thread shows the recorder. A
  recorder left installed by an exception that skipped the section's end forwards signals
  once the section is over, or :data:`STALE_AFTER` seconds after it first held one back.
* A section may be narrowed (:meth:`deferred.narrow`) to hold back only the signals that
  arrive in given frames: a ``transaction()`` block keeps one across its body, so a Ctrl-C at
  the first instruction of its ``__exit__`` cannot skip the exit (the body itself stays
  interruptible). A handler the body installs with ``signal.signal()`` takes the recorder's
  place and stays installed when the section ends (a section puts the original handlers back
  only where a recorder is still installed), as it would without the section; from then to
  the section's end, its signals go to that handler at once, at the exit's start too.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from types import CodeType, FrameType
from typing import Any

__all__ = ["DEFERRED_SIGNALS", "deferred", "within"]

#: Signals whose Python handlers wait for the end of a section: those programs use to stop or
#: interrupt work (SIGINT raises KeyboardInterrupt by default; SIGALRM is how timeouts such as
#: pytest-timeout's raise). Signals left at SIG_DFL or SIG_IGN have no Python handler to defer.
DEFERRED_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGALRM",
                                       "SIGUSR1", "SIGUSR2") if hasattr(signal, name))

_MAIN_THREAD = threading.main_thread().ident

# The C functions under the signal module's wrappers, which convert every handler and number
# to and from an enum (about 2 us per call; a put swaps and restores handlers four times).
# Same behaviour otherwise: handlers are exactly the objects signal.signal() takes.
try:
    from _signal import getsignal as _get_handler
    from _signal import signal as _set_handler
except ImportError:  # an interpreter without CPython's _signal: the public wrappers
    _get_handler, _set_handler = signal.getsignal, signal.signal  # type: ignore[assignment]
_SIGNUMS = tuple(int(signum) for signum in DEFERRED_SIGNALS)

#: Seconds after which a section that holds a signal back and is still active is taken as
#: abandoned and its signals delivered (see :meth:`deferred._heal`). The write path's sections
#: last micro- to milliseconds (a COMMIT's fsync, a bounded checkpoint wait); one that runs
#: longer only gets its signal delivered inside it, which the write path survives like any
#: exception there.
STALE_AFTER = 2.0


def within(codes: frozenset, depth: int = 4) -> Callable[[FrameType], bool]:
    """For :meth:`deferred.narrow`: whether a frame runs one of ``codes`` (code objects), or
    is at most ``depth - 1`` calls below one: a deferral it begins or ends (``deferred._end``
    runs under ``deferred.__exit__``), the context manager or generator it resumes, and a
    trace function above any of them (a debugger's, the tests' that send signals). No deeper:
    what those call keeps its own handling of signals."""
    def where(frame: FrameType) -> bool:
        found: FrameType | None = frame
        for _ in range(depth):
            if found is None:
                return False
            if found.f_code in codes:
                return True
            found = found.f_back
        return False
    return where


def _heal_later(section: "deferred") -> None:
    timer = threading.Timer(STALE_AFTER, section._heal)
    timer.daemon = True
    timer.start()
_Handler = Callable[[int, "FrameType | None"], Any]


#: What ended a section that held no handlers (not in the main thread): read, never changed.
_NOTHING_HELD: tuple[dict[int, _Handler], Sequence[tuple[int, FrameType | None]]] = ({}, ())


class deferred:
    """``with deferred():`` holds back, in the main thread, the Python handlers of
    :data:`DEFERRED_SIGNALS` until the block ends, then runs them (so an exception a handler
    raises propagates from the ``with`` statement's end). Elsewhere it does nothing. Nests.

    Safe to leave half done: the recorder it installs checks whether its section is still
    active and, once it is not, forwards a signal to the original handler at once. So an
    exception that interrupts the swapping or the restoring (or skips ``__exit__``) can leave
    a recorder installed, but never one that swallows a signal."""

    __slots__ = ("_saved", "_pending", "_active", "_only")

    def __init__(self) -> None:
        self._saved: dict[int, _Handler] | None = None
        # A tuple until the main thread's __enter__ makes the list it records into: sections
        # in other threads (most of them, and every write's three) allocate no list.
        self._pending: Sequence[tuple[int, FrameType | None]] = ()
        self._active = False
        self._only: Callable[[FrameType], bool] | None = None  # see narrow()

    def __enter__(self) -> "deferred":
        if threading.get_ident() != _MAIN_THREAD:
            return self
        pending: list[tuple[int, FrameType | None]] = []
        self._pending = pending
        originals: dict[int, _Handler] = {}

        def record(signum: int, frame: FrameType | None) -> None:
            only = self._only
            if self._active and (only is None or (frame is not None and only(frame))):
                pending.append((signum, frame))
                if len(pending) == 1:
                    _heal_later(self)
            else:  # left installed after the section ended: behave as if never swapped
                originals[signum](signum, frame)

        self._active = True
        self._saved = originals
        try:
            for signum in _SIGNUMS:
                handler = _get_handler(signum)
                if callable(handler):
                    # Recorded first, then swapped: a signal between the two runs the
                    # original handler, before the section starts (nothing to protect yet).
                    originals[signum] = handler
                    _set_handler(signum, record)
            return self  # inside the try: an exception here still ends the section
        except BaseException:
            self._end()
            raise

    def narrow(self, where: Callable[[FrameType], bool]) -> None:
        """From now on hold back only the signals that arrive while ``where(frame)`` is true
        of the frame running (the one Python hands a handler); let every other one through
        at once. The signals held back so far are handled here (so what they raise is raised
        here). Ended like any section.

        What it is for: a ``transaction()`` block's body is the caller's code, which Ctrl-C
        must interrupt, but a Ctrl-C at the first instruction of the block's ``__exit__``
        (CPython checks for signals at every function's entry) would skip the whole of it and
        leave the transaction open. Narrowed to the exit's own functions, a section begun
        before the body delivers that one just after the exit instead."""
        self._only = where
        saved, pending = self._saved, self._pending
        if not saved or not pending:
            return
        held = list(pending)
        pending.clear()  # type: ignore[attr-defined]  # the recorder's list (main thread)
        _run_held(saved, held)

    def _end(self) -> tuple[dict[int, _Handler], Sequence[tuple[int, FrameType | None]]]:
        """End the section: from the first line on, a recorder still installed forwards;
        then put the handlers back (once, over recorders only) and return them and the
        signals that arrived."""
        self._active = False
        saved, self._saved = self._saved, None
        if not saved:
            return _NOTHING_HELD
        for signum, handler in saved.items():
            # Put back only over a recorder (this section's, or one a section inside it left
            # installed): a handler the program installed meanwhile (a transaction() body's
            # signal.signal()) stays, as it would without the section.
            if getattr(_get_handler(signum), "__code__", None) is _RECORDER:
                _set_handler(signum, handler)
        pending, self._pending = self._pending, ()
        return saved, pending

    def _heal(self) -> None:
        """From a timer thread, :data:`STALE_AFTER` seconds after this section first held a
        signal back: if it is still active, take it as abandoned (an exception raised into
        the main thread at the first instruction of ``__exit__`` skips ``_end``; no code can
        guard its own entry) and deliver what it holds, as if the signals came now."""
        if not self._active:
            return
        self._active = False
        pending, self._pending = self._pending, ()
        held = list(pending)
        if type(pending) is list:
            # The recorder, left installed, keeps this list: emptied, it keeps no frame (and
            # whatever the frame refers to, such as a read whose finalizer gives back its
            # connection) alive for the rest of the process.
            pending.clear()
        for signum, _frame in held:
            # To the main thread itself (raise_signal would go to this timer thread): that
            # also wakes a main thread blocked in a wait, as the first delivery would have.
            signal.pthread_kill(_MAIN_THREAD, signum)

    def release_later(self) -> None:
        """End the deferral without running the handlers here (for a finalizer, which has
        nowhere to raise to): put the handlers back and send the signals that arrived again,
        so that they are handled at the main thread's next chance, as if they came now."""
        _, pending = self._end()
        for signum, _frame in pending:
            signal.raise_signal(signum)

    def __exit__(self, *exc_info: object) -> None:
        handlers, pending = self._end()
        if pending:
            _run_held(handlers, pending)


def _run_held(handlers: dict[int, _Handler],
              held: Sequence[tuple[int, FrameType | None]]) -> None:
    """Call the handlers a section saved for the signals it held, in the order they came. A
    handler may raise (that is the point: KeyboardInterrupt); the signals held after it are
    then handled right here, each signal once (CPython coalesces a signal pending twice), and
    an exception one of their handlers raises replaces the first, chained to it: what CPython
    does at its next check when a handler raised with other signals pending. Before, they
    were dropped: a SIGTERM held behind a Ctrl-C never reached its handler (session 26's
    review). Called, not sent again through the kernel (session 27's review): a signal sent
    again would meet whatever disposition is current (SIG_DFL, which a body may set,
    terminates the process), a main thread that blocks it, or asyncio's wakeup fd a second
    time."""
    for index, (signum, frame) in enumerate(held):
        try:
            handlers[signum](signum, frame)
        except BaseException:
            rest: dict[int, FrameType | None] = {}
            for later, later_frame in held[index + 1:]:
                rest.setdefault(later, later_frame)
            if rest:
                _run_held(handlers, list(rest.items()))
            raise


#: The code of the recorders :meth:`deferred.__enter__` installs (see :meth:`deferred._end`).
_RECORDER = next(const for const in deferred.__enter__.__code__.co_consts
                 if isinstance(const, CodeType) and const.co_name == "record")
