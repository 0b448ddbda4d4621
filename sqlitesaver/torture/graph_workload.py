"""The ``--langgraph`` torture's workload: real LangGraph graphs run through the adapter, and a
checkpointer that tells the harness what it acknowledged.

The graph (:func:`build_graph`) is a ``StateGraph`` with a parallel fan-out, looped: ``a``, then
``b``, ``c`` and ``d`` in parallel (their writes reach the checkpointer at once, from several
threads), then ``e``, which ends a round; a run does 1 to 3 rounds (7 to 17 checkpoints). Each
node appends to ``log`` a text that depends only on the node, the run's ``salt`` and ``size``
and how long ``log`` is, so an uninterrupted run's final state is a function of the run's input
(:class:`RunSpec`), computed by :func:`reference` without any checkpointer. ``size`` (0 to
6,000 characters per entry) makes some checkpoints span overflow pages.

``b``, ``c`` and ``d`` lead to ``e`` by three edges, not by a join (``add_edge(["b", "c", "d"],
"e")``): ``e`` runs once either way, but a join's barrier channel keeps its set of finished
nodes in an object LangGraph mutates in place, and under ``durability="async"`` its loop goes on
mutating it while the checkpoints that share it wait to be serialized by ``put`` in the
background. A checkpoint then holds the next round's set; a run resumed from it never runs
``e`` again and ends short. That is LangGraph's (1.2, with its own ``SqliteSaver`` and
``InMemorySaver`` as with ours, without any crash: see research/persistence_durability_report.md,
"LangGraph graphs"), not the checkpointer's, and the torture would report it as a wrong final
state; the graph avoids it so that what the torture reports is the adapter's doing.

:class:`ReportingCheckpointer` is ``sqlitesaver.langgraph.SqliteSaver`` reporting to the harness:
an ``intent`` before each ``put`` / ``put_writes`` with what it stores (ids, metadata step,
digests of the values), and an ``ack`` with the same call number only after the call returned.
Nodes report when they start, with their task id, so the harness can tell whether resuming a
thread runs again a node that had finished. It is the seam for the harness's self-tests:
``tests/torture_adapters.py`` subclasses it with adapters that acknowledge before COMMIT.

Importing this module imports LangGraph (``langgraph``, the ``test`` or ``bench`` extra).
"""

from __future__ import annotations

import hashlib
import operator
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgpack
from typing_extensions import TypedDict

try:
    from langgraph.graph import END, START, StateGraph
except ImportError as exc:
    raise ImportError("python -m sqlitesaver.torture --langgraph needs LangGraph: "
                      "pip install langgraph (or the 'test' extra)") from exc

from ..langgraph import SqliteSaver

__all__ = ["CHANNELS", "GraphState", "RunSpec", "ReportingCheckpointer", "build_graph",
           "next_spec", "reference", "state_digest", "value_digest", "writes_digests"]

#: The graph's own channels: what a checkpoint's digest covers (LangGraph's internal channels,
#: such as the join barrier's set, are mutated by its loop after a put and are left out).
CHANNELS = ("who", "salt", "rounds", "size", "round", "log")
#: The run's shape, drawn per run from the writer thread's seeded stream.
ROUNDS = (1, 2, 3)
SIZES, SIZE_WEIGHTS = (0, 100, 1000, 6000), (3, 4, 2, 1)
SALTS = 8
#: Graph durabilities, drawn per run: "sync" puts each checkpoint before the next superstep
#: starts; "async" (LangGraph's default) puts it while the next one runs, so that superstep's
#: writes often reach the adapter before their checkpoint (its rendezvous).
DURABILITIES = ("sync", "async")


class GraphState(TypedDict):
    who: str          # the thread id: no node reads it, every checkpoint carries it
    salt: int
    rounds: int
    size: int
    round: int
    log: Annotated[list, operator.add]


# --- digests ------------------------------------------------------------------------------

def value_digest(value: Any) -> str:
    """A short digest of a value as LangGraph hands it over (anything msgpack cannot pack is
    digested by its repr)."""
    packed = msgpack.packb(value, use_bin_type=True, default=repr)
    return hashlib.blake2b(packed, digest_size=12).hexdigest()


def state_digest(values: dict[str, Any]) -> str:
    """The digest of a checkpoint's (or a final state's) values of :data:`CHANNELS`."""
    return value_digest({name: values[name] for name in CHANNELS if name in values})


def writes_digests(writes: Sequence[tuple[str, Any]]) -> list[list[str]]:
    """``[[channel, value digest], ...]`` in order: what a ``put_writes`` call stores."""
    return [[channel, value_digest(value)] for channel, value in writes]


# --- the graph ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RunSpec:
    """One graph run: a new LangGraph thread, its input and its durability."""

    thread: str
    salt: int
    rounds: int
    size: int
    durability: str

    def input(self) -> dict[str, Any]:
        return {"who": self.thread, "salt": self.salt, "rounds": self.rounds,
                "size": self.size, "round": 0, "log": []}

    def as_message(self) -> dict[str, Any]:
        return {"t": self.thread, "salt": self.salt, "rounds": self.rounds, "size": self.size,
                "d": self.durability}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> "RunSpec":
        return cls(message["t"], message["salt"], message["rounds"], message["size"],
                   message["d"])


def next_spec(rng: random.Random, thread: str) -> RunSpec:
    return RunSpec(thread, rng.randrange(SALTS), rng.choice(ROUNDS),
                   rng.choices(SIZES, SIZE_WEIGHTS)[0], rng.choice(DURABILITIES))


def _text(name: str, salt: int, length: int, size: int) -> str:
    head = f"{name}:{length}"
    if not size:
        return head
    seed = hashlib.blake2b(f"{salt}/{name}/{length}".encode(), digest_size=16).hexdigest()
    return f"{head}:{(seed * (size // len(seed) + 1))[:size]}"


#: ``on_start(thread_id, node, step, task_id)``: called as a node starts.
OnStart = Callable[[str, str, int, str], None]


def build_graph(on_start: OnStart | None = None) -> StateGraph:
    """The torture graph (see the module docstring), uncompiled."""

    def node(name: str) -> Callable[..., dict[str, Any]]:
        def run(state: GraphState, config):  # noqa: ANN001 (LangGraph finds `config` by name)
            if on_start is not None:
                metadata = config.get("metadata") or {}
                # "<parent ns>|<node>:<task id>"; the root graph has no parent namespace
                task = str(metadata.get("langgraph_checkpoint_ns", "")).rpartition(":")[2]
                on_start(str(config["configurable"]["thread_id"]), name,
                         int(metadata.get("langgraph_step", -99)), task)
            update: dict[str, Any] = {"log": [_text(name, state["salt"], len(state["log"]),
                                                    state["size"])]}
            if name == "e":
                update["round"] = state["round"] + 1
            return update
        run.__name__ = name
        return run

    builder = StateGraph(GraphState)
    for name in "abcde":
        builder.add_node(name, node(name))
    builder.add_edge(START, "a")
    for name in "bcd":
        builder.add_edge("a", name)
        builder.add_edge(name, "e")  # not a join barrier: see the module docstring
    builder.add_conditional_edges(
        "e", lambda state: "a" if state["round"] < state["rounds"] else END, ["a", END])
    return builder


_REFERENCE: dict[tuple[int, int, int], dict[str, Any]] = {}
_PLAIN: list[Any] = []


def reference(spec: RunSpec) -> dict[str, Any]:
    """The final state of ``spec``'s run done start to end without a checkpointer (cached:
    only ``who`` differs between runs of the same salt, rounds and size, and no node reads
    it)."""
    key = (spec.salt, spec.rounds, spec.size)
    if key not in _REFERENCE:
        if not _PLAIN:
            _PLAIN.append(build_graph().compile())
        _REFERENCE[key] = _PLAIN[0].invoke(RunSpec("", *key, "sync").input())
    return {**_REFERENCE[key], "who": spec.thread}


# --- the reporting adapter ----------------------------------------------------------------

def _location(config: dict) -> tuple[str, str, str | None]:
    configurable = config.get("configurable") or {}
    return (str(configurable.get("thread_id")), configurable.get("checkpoint_ns", ""),
            configurable.get("checkpoint_id") or None)


class ReportingCheckpointer(SqliteSaver):
    """``sqlitesaver.langgraph.SqliteSaver`` telling the harness what it was asked to store
    (an ``intent``, before the call) and what it acknowledged (an ``ack``, after the call
    returned: after its COMMIT). ``report`` sends one message; the child sets it.

    The adapter's own methods are :meth:`store_put` and :meth:`store_writes`; a broken
    adapter in the tests overrides :meth:`put` or :meth:`put_writes` to acknowledge before
    calling them."""

    report: Callable[[dict[str, Any]], None] = staticmethod(lambda message: None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._calls = iter(range(1, 1 << 62))

    # --- what the harness is told -------------------------------------------------------

    def announce_put(self, config: dict, checkpoint: dict, metadata: dict) -> int:
        thread, namespace, parent = _location(config)
        call = next(self._calls)
        self.report({"m": "intent", "c": call, "k": "put", "t": thread, "ns": namespace,
                     "id": checkpoint["id"], "p": parent, "step": metadata.get("step"),
                     "src": metadata.get("source"),
                     "dg": state_digest(checkpoint["channel_values"])})
        return call

    def announce_writes(self, config: dict, writes: Sequence[tuple[str, Any]],
                        task_id: str) -> int:
        thread, namespace, checkpoint_id = _location(config)
        call = next(self._calls)
        self.report({"m": "intent", "c": call, "k": "writes", "t": thread, "ns": namespace,
                     "ck": checkpoint_id, "task": task_id, "w": writes_digests(writes)})
        return call

    def acknowledge(self, call: int) -> None:
        self.report({"m": "ack", "c": call})

    # --- the adapter's calls, reported --------------------------------------------------

    def store_put(self, config: dict, checkpoint: dict, metadata: dict,
                  new_versions: dict) -> dict:
        return SqliteSaver.put(self, config, checkpoint, metadata, new_versions)

    def store_writes(self, config: dict, writes: Sequence[tuple[str, Any]], task_id: str,
                     task_path: str = "") -> None:
        SqliteSaver.put_writes(self, config, writes, task_id, task_path)

    def put(self, config: dict, checkpoint: dict, metadata: dict, new_versions: dict) -> dict:
        call = self.announce_put(config, checkpoint, metadata)
        result = self.store_put(config, checkpoint, metadata, new_versions)
        self.acknowledge(call)
        return result

    def put_writes(self, config: dict, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        call = self.announce_writes(config, writes, task_id)
        self.store_writes(config, writes, task_id, task_path)
        self.acknowledge(call)
