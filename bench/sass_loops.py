"""What the GPU will run, read without a GPU: the machine code (SASS) of kvserve's CUDA kernels.

For every kernel in a CUDA binary (kvserve._C of a CUDA build by default, or any .so / .o given),
per architecture: its registers and local memory (from cuobjdump -res-usage), and for each of its
innermost loops that holds tensor-core instructions (the attention kernel's per-stage loop), how
many instructions one trip through the loop holds, split by kind. Loops whose code calls a
subroutine (the softcap's full-precision division) are marked "transformed", the others "raw"
(sm_80 code leaves a loop by a CALL.REL.NOINC to the instruction after its backward branch: not a
subroutine).

    python bench/sass_loops.py                      # kvserve._C, every kernel with such a loop
    python bench/sass_loops.py build/cuda/cpp/CMakeFiles/kvserve_engine.dir/__/cuda/paged_attention.cu.o
    python bench/sass_loops.py --kernel attention_mma --arch sm_90a

Needs cuobjdump and nvdisasm: from the CUDA toolkit, or pip's nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm wheels (looked for in the Python environment too). Static counts: an
instruction inside a branch not taken counts as much as one on the hot path.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

KINDS = ("HMMA", "LDSM", "LDGSTS", "LDG", "MUFU", "FFMA", "FMUL", "IMAD", "ISETP", "BRA", "BAR", "LDL", "STL")


def find_tool(name: str) -> str | None:
    """A CUDA binary tool: on PATH, under CUDA_HOME, or from a pip nvidia-* wheel; None if absent."""
    found = shutil.which(name)
    if found:
        return found
    candidates = [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / name]
    site = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    candidates += sorted(site.glob(f"*/bin/{name}"))
    return next((str(path) for path in candidates if path.is_file() and os.access(path, os.X_OK)), None)


def tool(name: str) -> str:
    return find_tool(name) or sys.exit(
        f"{name} not found: install the CUDA toolkit, or pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")


def default_binary() -> str:
    import kvserve._C as c
    if not c.has_cuda:
        sys.exit("this kvserve was built without CUDA kernels: give the path of a CUDA build's .so or .o")
    return c.__file__


@dataclass
class Loop:
    kind: str  # "raw" or "transformed"
    counts: collections.Counter
    size: int


def functions(sass: str) -> dict[tuple[str, str], list[tuple[int, str]]]:
    """(arch, mangled name) -> [(address, instruction)]."""
    result, arch, current = {}, "", None
    for line in sass.splitlines():
        if m := re.search(r"code for (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.search(r"Function : (\S+)", line):
            current = result.setdefault((arch, m.group(1)), [])
        elif current is not None and (m := re.search(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", line)):
            current.append((int(m.group(1), 16), m.group(2).strip()))
    return result


def mnemonic(instruction: str) -> str:
    """The opcode with its modifiers, without the predicate: LDG.E.128.STRONG.GPU."""
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0]


def opcode(instruction: str) -> str:
    return mnemonic(instruction).split(".")[0]


def tensor_loops(code: list[tuple[int, str]]) -> list[Loop]:
    """The innermost loops (backward branches) whose body holds HMMA instructions."""
    spans = []
    for address, instruction in code:
        if (m := re.search(r"BRA\S*\s+0x([0-9a-f]+)", instruction)) and int(m.group(1), 16) < address:
            body = [t for a, t in code if int(m.group(1), 16) <= a <= address]
            if any(opcode(t) == "HMMA" for t in body):
                spans.append((int(m.group(1), 16), address, body))
    inner = [s for s in spans if not any(o is not s and s[0] <= o[0] and o[1] <= s[1] for o in spans)]
    return [Loop("transformed" if calls_subroutine(body, end) else "raw",
                 collections.Counter(opcode(t) for t in body), len(body))
            for _, end, body in sorted(inner)]


def calls_subroutine(body: list[str], end: int) -> bool:
    """Whether a loop body (its backward branch at `end`) calls a subroutine: a CALL to anywhere but
    the instruction after that branch (sm_80's way out of a loop)."""
    targets = [re.search(r"CALL\S*\s+0x([0-9a-f]+)", t) for t in body if opcode(t) == "CALL"]
    return any(target is None or int(target.group(1), 16) != end + 0x10 for target in targets)


# Instructions that touch global (or generic, which may be global) memory; CCTL and UBLKPF (prefetch
# hints) are not.
GLOBAL_ACCESS = ("LDG", "STG", "LDGSTS", "LD", "ST", "ATOM", "ATOMG", "RED", "UBLKCP", "UTMALDG")


def before_prior_grid(code: list[tuple[int, str]]) -> list[str] | None:
    """What a programmatically launched kernel does before its wait for the kernel before it
    (griddepcontrol.wait, SASS ACQBULK) that it must not (cuda/compat.cuh): touch global memory other
    than by a load through L2 (LDG ... STRONG.GPU: of memory no kernel writes) or a prefetch hint,
    exit, or branch past the wait. None when the kernel does not wait at all."""
    wait = next((address for address, t in code if opcode(t) == "ACQBULK"), None)
    if wait is None:
        return None
    bad = []
    for address, instruction in code:
        if address >= wait:
            break
        target = re.search(r"BRA\S*\s+0x([0-9a-f]+)", instruction)
        through_l2 = opcode(instruction) == "LDG" and ".STRONG.GPU" in mnemonic(instruction)
        past_the_wait = opcode(instruction) == "EXIT" or (target and int(target.group(1), 16) > wait)
        if (opcode(instruction) in GLOBAL_ACCESS and not through_l2) or past_the_wait:
            bad.append(instruction)
    return bad


def disassemble(binary: str) -> str:
    """cuobjdump -sass of `binary` (which runs nvdisasm)."""
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(tool("nvdisasm")).parent), os.environ.get("PATH", "")]))
    return subprocess.run([tool("cuobjdump"), "-sass", binary], capture_output=True, text=True, check=True,
                          env=env).stdout


def resources(binary: str) -> dict[tuple[str, str], str]:
    """(arch, mangled name) -> 'REG:.. STACK:.. SHARED:.. LOCAL:..' from cuobjdump -res-usage."""
    out = subprocess.run([tool("cuobjdump"), "-res-usage", binary], capture_output=True, text=True, check=True).stdout
    result, arch, name = {}, "", None
    for line in out.splitlines():
        if m := re.search(r"arch = (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.search(r"Function (\S+):", line):
            name = m.group(1)
        elif name and "REG:" in line:
            result[(arch, name)] = " ".join(f for f in line.split() if f.split(":")[0] in ("REG", "STACK", "LOCAL"))
            name = None
    return result


def short_name(mangled: str) -> str:
    """attention_mma_kernel<bf16, D128, 16 rows> (or rotary_kernel<bf16, true>, linear_kernel<bf16, Epilogue 1>:
    bool and enum template arguments last; a tile of other than four warps says so, ", 2 warps"; a
    product over quantized codes names them, ", uint4 weight"; an fp8 KV cache's type comes last, e.g.
    ", e4m3 cache") from the mangled instance name."""
    # Length-prefixed names after _ZN: kvserve, then gpu or an anonymous namespace, then the kernel.
    name, base = mangled.removeprefix("_ZN"), ""
    while (match := re.match(r"\d+", name)) and not base:
        length = int(match.group(0))
        part, name = name[match.end():match.end() + length], name[match.end() + length:]
        if part not in ("kvserve", "gpu") and not part.startswith("_GLOBAL__N"):
            base = part
    first = name.removeprefix("I")  # the first template argument: the rows' dtype
    dtype = ("f32" if first.startswith("f") else "f16" if first.startswith("6__half") else
             "bf16" if re.match(r"NS\w{0,8}BFloat16", first) else "")
    tile = re.search(r"MmaTileI\w+?_Li(\d+)ELi(\d+)E", name)
    shape = f", D{tile.group(1)}, {tile.group(2)} rows" if tile else ""
    # The tile's warps follow its cache type (S2_: the rows' own, or an fp8 type's name).
    warps = re.search(r"MmaTileI\w+?_Li\d+ELi\d+E(?:S\d*_|NS\d*_\d+Float8E\dM\dE)Li(\d+)E", name)
    shape += f", {warps.group(1)} warps" if warps and warps.group(1) != "4" else ""
    shape += "".join(f", {codes} weight" for codes, reading in (("uint4", "Uint4Weight"), ("int8", "Int8Weight"),
                                                                 ("e4m3", "E4m3Weight")) if reading in name)
    flags = "".join(", true" if bit == "1" else ", false" for bit in re.findall(r"Lb([01])E", name))
    for scoped in re.finditer(r"LNS\d*_(\d+)", name):  # a scoped enum's value: its type's name, then the number
        enum = name[scoped.end():scoped.end() + int(scoped.group(1))]
        value = re.match(r"E(\d+)E", name[scoped.end() + len(enum):])
        flags += f", {enum} {value.group(1)}" if value else ""
    cache = "".join(f", {fp8} cache" for fp8 in ("e4m3", "e5m2") if f"Float8{fp8.upper()}" in name)
    return f"{base}<{dtype}{shape}{flags}{cache}>"


@dataclass
class LoopRow:
    arch: str
    kernel: str  # short_name
    resources: str
    loop: Loop


def kernel_loops(binary: str, kernel: str = "", arch: str = "") -> list[LoopRow]:
    """Every tensor-core loop of the kernels whose mangled name contains `kernel`, for `arch` (all
    when empty), sorted by architecture and kernel."""
    sass = disassemble(binary)
    usage = resources(binary)
    rows = []
    for (function_arch, name), code in functions(sass).items():
        if kernel in name and arch in function_arch:
            rows += [LoopRow(function_arch, short_name(name), usage.get((function_arch, name), ""), loop)
                     for loop in tensor_loops(code)]
    return sorted(rows, key=lambda row: (row.arch, row.kernel))


def prologues(binary: str, arch: str) -> dict[str, list[str] | None]:
    """kvserve's kernels (mangled names) for `arch` -> before_prior_grid of each."""
    sass = disassemble(binary)
    return {name: before_prior_grid(code) for (function_arch, name), code in functions(sass).items()
            if function_arch == arch and name.startswith("_ZN7kvserve")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", nargs="?", help="a CUDA .so or .o (default: kvserve._C)")
    parser.add_argument("--kernel", default="", help="only kernels whose name contains this")
    parser.add_argument("--arch", default="", help="only this architecture, e.g. sm_90a")
    args = parser.parse_args()
    print(f"| arch | kernel | resources | loop | instructions | {' | '.join(KINDS)} |")
    print(f"|---|---|---|---|---|{'---|' * len(KINDS)}")
    for row in kernel_loops(args.binary or default_binary(), args.kernel, args.arch):
        kinds = " | ".join(str(row.loop.counts.get(k, 0)) for k in KINDS)
        print(f"| {row.arch} | {row.kernel} | {row.resources} | {row.loop.kind} | {row.loop.size} | {kinds} |")


if __name__ == "__main__":
    main()
