"""Which 64-byte lines of the kernel parameter bank each kernel's warps wait for before their first global load.

A kernel reads its arguments through the constant cache. A uniform constant load (ULDC) whose line is not yet in
the cache stops the warp until the line arrives, and a warp that touches several such lines before it issues its
first load waits for them one after the other (ncu on the single-pair forward, results/run31_param_lines). This
reads the SASS of a build and lists, per kernel, the lines its ULDCs touch before the first LDG, and all lines any
constant load touches there (LDC results are waited for only where used).

    cuobjdump -sass _qkrope*.so > kernels.sass   # cuobjdump needs nvdisasm on PATH
    python benchmarks/param_lines.py kernels.sass [--kernel forward_single]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

LINE_BYTES = 64
FUNCTION = re.compile(r"\n\s+Function : (\S+)")
INSTRUCTION = re.compile(r"/\*[0-9a-f]{4}\*/\s+([^;]*);")
CONSTANT = re.compile(r"c\[0x0\]\[(0x[0-9a-f]+)\]")


def opcode(instruction: str) -> str:
    """The opcode of a SASS instruction, past its predicate (@P0, @!UP1)."""
    words = instruction.split()
    return words[1] if words[0].startswith("@") else words[0]


def lines(instructions: list[str]) -> list[int]:
    """The parameter-bank lines the constants of these instructions lie in, ascending."""
    return sorted({int(offset, 16) // LINE_BYTES * LINE_BYTES for i in instructions for offset in CONSTANT.findall(i)})


def prologue_lines(sass: str, kernel: str) -> dict[str, tuple[int, list[int], list[int]]]:
    """Per kernel whose mangled name contains `kernel`: (index of its first LDG, the lines its ULDCs touch before
    it, the lines any constant load touches before it)."""
    parts = FUNCTION.split(sass)
    found: dict[str, tuple[int, list[int], list[int]]] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if kernel not in name or name in found:
            continue
        instructions = INSTRUCTION.findall(body)
        first = next((i for i, x in enumerate(instructions) if opcode(x).startswith("LDG")), len(instructions))
        before = instructions[:first]
        uniform = [x for x in before if opcode(x).startswith("ULDC")]
        found[name] = (first, lines(uniform), lines(before))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sass", type=Path)
    parser.add_argument("--kernel", default="forward_single", help="part of the mangled kernel names to keep")
    args = parser.parse_args()
    found = prologue_lines(args.sass.read_text(), args.kernel)
    for name, (first, uniform, touched) in sorted(found.items()):
        print(f"{name}: first LDG at instruction {first}; ULDC lines {[hex(x) for x in uniform]}; "
              f"all constant lines {[hex(x) for x in touched]}")
    waits = [len(u) for _, u, _ in found.values()]
    if waits:
        print(f"{len(found)} kernels; ULDC lines before the first load: {min(waits)}-{max(waits)}")


if __name__ == "__main__":
    main()
