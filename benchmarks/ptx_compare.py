"""Which kernels a CUDA change touches, without a GPU: compiles the kernel sources of the working tree and
of each given git revision to PTX (nvcc -ptx, the build's flags) and prints, for every kernel entry of the
working tree, the revisions whose PTX of that entry is byte-identical. Identical PTX gives identical machine
code, so a kernel that matches a revision's is the kernel measured on that revision.

    python benchmarks/ptx_compare.py REV [REV ...] [--sources forward_bf16.cu ...] [--all]

Without --all, only the entries that do not match every revision are listed (then one count per file).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("forward_bf16.cu", "forward_f16.cu", "forward_f32.cu", "backward_bf16.cu", "backward_f16.cu",
           "backward_f32.cu")
# The kernels' flags from CMakeLists.txt, for the PTX target only.
NVCC_FLAGS = ("-O3", "-DNDEBUG", "-arch=compute_90", "--expt-relaxed-constexpr", "-std=c++17", "-ptx")
ENTRY = re.compile(r"^(?:\.visible )?\.entry (\S+?)\(", re.MULTILINE)


def ptx_entries(ptx: str) -> dict[str, str]:
    """Each kernel entry's PTX text, by mangled name (from its .entry line to the next one)."""
    starts = [(m.start(), m.group(1)) for m in ENTRY.finditer(ptx)]
    ends = [start for start, _ in starts[1:]] + [len(ptx)]
    return {name: ptx[start:end] for (start, name), end in zip(starts, ends, strict=True)}


def compile_tree(tree: Path, source: str, out: Path) -> dict[str, str]:
    subprocess.run(["nvcc", "-I", str(tree / "cpp"), *NVCC_FLAGS, str(tree / "cpp" / "cuda" / source), "-o",
                    str(out)], check=True)
    return ptx_entries(out.read_text())


def checkout(rev: str, into: Path) -> Path:
    """The revision's cpp/ folder under `into` (git archive: no worktree left behind)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "cpp"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def demangle(names: list[str]) -> list[str]:
    """Readable names: the kernel with its template arguments, no return type or parameters (c++filt)."""
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=False).stdout
    pretty = out.splitlines() if out else names
    return [re.sub(r"^void |\([^()]*\)$", "", name) for name in pretty]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revs", nargs="+")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES))
    parser.add_argument("--all", action="store_true", help="list every entry, not only those that differ")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"tree": ROOT, **{rev: checkout(rev, Path(tmp) / f"rev{i}") for i, rev in enumerate(args.revs)}}
        jobs = {(label, source): (tree, source, Path(tmp) / f"{label.replace('/', '_')}_{source}.ptx")
                for label, tree in trees.items() for source in args.sources}
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = dict(zip(jobs, pool.map(lambda job: compile_tree(*job), jobs.values()), strict=True))
    for source in args.sources:
        mine = results[("tree", source)]
        rows, counts = [], {}
        for name, text in mine.items():
            same = tuple(rev for rev in args.revs if results[(rev, source)].get(name) == text)
            key = " ".join(same) or "none"
            counts[key] = counts.get(key, 0) + 1
            if args.all or len(same) != len(args.revs):
                rows.append((key, name))
        print(f"{source}: {len(mine)} entries; identical to: "
              + ", ".join(f"{key} {n}" for key, n in sorted(counts.items())), flush=True)
        for (key, _), pretty in zip(rows, demangle([name for _, name in rows]), strict=True):
            print(f"  [{key}] {pretty}")


if __name__ == "__main__":
    main()
