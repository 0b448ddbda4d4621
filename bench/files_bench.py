"""Storing and restoring a workspace (issue #18) against ``cp -r`` + ``sync`` of the same tree.

``python bench/files_bench.py [--files 100] [--mib 50] [--runs 3] [--dir DIR]``

The tree: ``--files`` files of random (incompressible) bytes, ``--mib`` MiB in all, in a few
subdirectories; four of them are 4 MiB (several chunks), the rest share what is left. Each
run, in a fresh directory:

1. **first snapshot**: ``saver.put(..., workspace=tree)`` (hash, store every file, COMMIT with
   fsync) against ``cp -r tree copy1 && sync``;
2. **one file changed**: one small file is rewritten, then ``saver.put(..., workspace=tree)``
   again (only that file's bytes are new) against ``cp -r tree copy2 && sync`` (``cp`` has no
   notion of what changed);
3. **restore into an empty directory**: ``restore_workspace`` (each file written to a temporary
   name, fsynced, renamed, its directory fsynced) against ``cp -r copy2 out && sync``;
4. **restore over the other snapshot**: the first snapshot restored over a directory holding
   the second (one file differs: the rest is hashed and found identical) against
   ``rm -rf out && cp -r copy1 out && sync``.

The median of ``--runs`` runs is printed, ours and the baseline side by side. ``sync`` flushes
every file system's dirty data, not only the copy's: with other writers on the machine the
baseline pays for them too (the numbers say when that happened: the runs spread).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlitesaver import Saver  # noqa: E402


def make_tree(root: str, files: int, total: int, rng: random.Random) -> list[str]:
    big = min(4, files)
    big_size = min(4 << 20, total // (2 * max(big, 1)))
    small_size = (total - big * big_size) // max(files - big, 1)
    names = []
    for i in range(files):
        name = os.path.join(f"dir{i % 7}", f"sub{i % 3}", f"file{i:03d}.bin")
        full = os.path.join(root, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(rng.randbytes(big_size if i < big else small_size))
        names.append(name)
    return names


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def one_run(base: str, files: int, total: int, seed: int) -> dict[str, tuple[float, float]]:
    rng = random.Random(seed)
    tree = os.path.join(base, "tree")
    names = make_tree(tree, files, total, rng)
    sh("sync")
    results = {}
    with Saver(os.path.join(base, "bench.db")) as saver:
        ours = timed(lambda: saver.put("t", {"step": 1}, workspace=tree))
        first = saver.get("t").checkpoint_id
        theirs = timed(lambda: (sh("cp", "-r", tree, os.path.join(base, "copy1")), sh("sync")))
        results["first snapshot"] = (ours, theirs)

        changed = os.path.join(tree, names[-1])
        with open(changed, "wb") as f:
            f.write(rng.randbytes(os.path.getsize(changed)))
        sh("sync")
        ours = timed(lambda: saver.put("t", {"step": 2}, workspace=tree))
        theirs = timed(lambda: (sh("cp", "-r", tree, os.path.join(base, "copy2")), sh("sync")))
        results["snapshot after changing one file"] = (ours, theirs)

        out, out_cp = os.path.join(base, "out"), os.path.join(base, "out-cp")
        ours = timed(lambda: saver.restore_workspace("t", out))
        theirs = timed(lambda: (sh("cp", "-r", os.path.join(base, "copy2"), out_cp),
                                sh("sync")))
        results["restore into an empty directory"] = (ours, theirs)

        ours = timed(lambda: saver.restore_workspace("t", out, checkpoint_id=first))
        theirs = timed(lambda: (shutil.rmtree(out_cp),
                                sh("cp", "-r", os.path.join(base, "copy1"), out_cp),
                                sh("sync")))
        results["restore over the other snapshot (1 file differs)"] = (ours, theirs)
        stats = saver.stats()
    results["_stored"] = (stats["file_bytes"], stats["file_contents"])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--mib", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--dir", help="where to work (default: a temporary directory)")
    args = parser.parse_args()
    total = args.mib << 20
    runs = []
    for run in range(args.runs):
        base = tempfile.mkdtemp(prefix="files-bench-", dir=args.dir)
        try:
            runs.append(one_run(base, args.files, total, args.seed + run))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    stored_bytes, contents = runs[-1].pop("_stored")
    for r in runs[:-1]:
        r.pop("_stored")
    print(f"workspace: {args.files} files, {args.mib} MiB; median of {args.runs} runs "
          f"(each run's times in brackets)")
    print(f"stored after both snapshots: {contents} contents, {stored_bytes / 2**20:.1f} MiB "
          "(the unchanged files once)")
    width = max(len(k) for k in runs[0])
    print(f"{'':<{width}}  {'sqlitesaver':>12}  {'cp -r + sync':>12}  ratio")
    for key in runs[0]:
        ours = [r[key][0] for r in runs]
        theirs = [r[key][1] for r in runs]
        mo, mt = statistics.median(ours), statistics.median(theirs)
        print(f"{key:<{width}}  {mo * 1000:>9.0f} ms  {mt * 1000:>9.0f} ms  {mo / mt:5.2f}x"
              f"   [{', '.join(f'{x * 1000:.0f}' for x in ours)}] vs "
              f"[{', '.join(f'{x * 1000:.0f}' for x in theirs)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
