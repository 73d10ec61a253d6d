"""Keep the small per-case records of `kfsr.bench` in git, so benchmark tables survive a fresh
machine and long grids can be finished over several sessions.

`kfsr.bench --out DIR` writes one folder per (set, method) with, per finished case,
`<image>.json` (metrics), `<image>_config.json` (the config it ran with), `<image>_curve.json`
and `<image>_kernel.npy` (a few KiB each), plus large or transient files (SR images, spatially
variant fields, checkpoints, partial results, locks) that are not kept.

    python benchmarks/records.py save     # results/bench -> benchmarks/records (finished cases)
    python benchmarks/records.py load     # benchmarks/records -> results/bench (missing files)
    python -m kfsr.bench ... --out results/bench --report-only --update-docs   # rebuild a table

Neither direction overwrites a file that exists with other content: `save` reports such
conflicts and `load` keeps the local copy. Only cases whose `<image>.json` exists (finished) are
saved, so a record is never a half-run.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys

from kfsr import io

SUFFIXES = ("_config.json", "_curve.json", "_kernel.npy", ".json")
MAX_BYTES = 256 * 1024  # a 33x33 kernel is 9 KiB; fields and images are far larger
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def case_of(name: str) -> str | None:
    """The image a per-case record file belongs to, or None for files that are not records (the
    set's rebuilt aggregate, an unfinished case's partial result, images, fields)."""
    if name in ("results.json", "manifest.json") or name.endswith("_partial.json"):
        return None
    return next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), None)


def _finished_files(src: str):
    """(relative path) of every file to keep under src: only cases with a final <image>.json."""
    for d, dirs, files in os.walk(src):
        rel = os.path.relpath(d, src)
        if rel.split(os.sep)[0] == "data":  # generated inputs: rebuilt from the seed
            dirs[:] = []
            continue
        dirs[:] = [x for x in dirs if not x.endswith(".ckpt")]  # loop checkpoints
        finished = {f[:-5] for f in files if f.endswith(".json") and case_of(f) == f[:-5]}
        for f in sorted(files):
            if (case_of(f) in finished
                    and os.path.getsize(os.path.join(d, f)) <= MAX_BYTES):
                yield os.path.normpath(os.path.join(rel, f))


def copy_tree(src: str, dst: str, *, overwrite_conflicts: bool = False) -> tuple[int, list[str]]:
    """Copy the kept files of src into dst. Returns (files copied, conflicting paths)."""
    copied, conflicts = 0, []
    for rel in _finished_files(src):
        a, b = os.path.join(src, rel), os.path.join(dst, rel)
        if os.path.exists(b):
            if filecmp.cmp(a, b, shallow=False):
                continue
            if not overwrite_conflicts:
                conflicts.append(rel)
                continue
        with open(a, "rb") as f:  # atomic: a killed copy leaves no half file
            io._atomic_write(b, lambda out: shutil.copyfileobj(f, out))
        copied += 1
    return copied, conflicts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("save", "load"))
    p.add_argument("--results", default=os.path.join(ROOT, "results", "bench"),
                   help="the kfsr.bench --out folder")
    p.add_argument("--records", default=os.path.join(HERE, "records"))
    p.add_argument("--force", action="store_true",
                   help="save: replace records that differ (e.g. a case rerun on purpose)")
    a = p.parse_args(argv)
    src, dst = (a.results, a.records) if a.action == "save" else (a.records, a.results)
    if not os.path.isdir(src):
        print(f"error: {src}: no such folder", file=sys.stderr)
        return 2
    n, conflicts = copy_tree(src, dst, overwrite_conflicts=a.force and a.action == "save")
    print(f"{a.action}: {n} files copied from {src} to {dst}")
    if conflicts:
        what = ("differ from the records (rerun with --force to replace them)" if a.action == "save"
                else "differ locally and were kept")
        print(f"{len(conflicts)} files {what}:\n  " + "\n  ".join(conflicts[:20]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
