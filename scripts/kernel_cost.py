#!/usr/bin/env python3
"""Cost model of the fused clamped-entropy kernels from their compiled code, on a machine without a GPU.

Each kernel variant is compiled ahead of time for sm_90 and sm_80 (``triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))``) with the argument specialisation the launcher gives it at V = 151,936
(16-byte aligned pointers, unit column stride, row stride and V divisible by 16; ``--vocab`` another V, which is
also the row stride), and read back with the
``cuobjdump`` and ``nvdisasm`` bundled in the Triton wheel:

* resources: registers per thread, local-memory spills (STACK/LOCAL), shared memory, and from them the programs
  (thread blocks) per multiprocessor;
* per pass (each loop in the SASS whose body reads global memory, in address order; the backward kernel has no
  loop and counts as one pass over its block): warp instructions per element by class (integer, float, of which
  MUFU, vote/atomic, memory, control), counting every instruction of the loop body once per iteration, as a warp
  issues it whether predicated off or not (an upper bound where the body branches);
* an estimated time per pass at H100 SXM figures (below): SM-cycles per element for the arithmetic (the slowest of
  the issue slots and the pipes) against those for streaming the pass's bytes at HBM bandwidth, with the memory
  side stretched when too few bytes are in flight to cover the memory latency (Little's law);
* the work done once per row: every instruction outside the passes (an upper bound: it includes code only the
  fallback runs) and the loops that do not read the row (the v3 select's bisections, times their trip counts),
  each warp instruction issued by every warp of the program. Latency (the block-wide reductions wait on each
  other) is not counted: the other programs on the multiprocessor are assumed to stream meanwhile.

The kernel estimate at T rows is the sum of the passes a typical row runs and its per-row work.

**Every figure is an estimate from compiled code, not a GPU time.** The kernels compared: "v1" (a radix select
with a 256-bin histogram of every element in each of 4 float32 passes) and "v2" (the row max in the first pass,
the float32 select finished on a candidate buffer after two digit passes), both read from git, and "v3" (pivots
from a sample, counted in pass 1; the select finished on a candidate buffer in pass 2), the kernel in
``aent/ops/triton_entropy.py``.

Needs: Python with torch (CPU is enough) and Triton >= 3.4 (the NVIDIA backend with its bundled ptxas, cuobjdump and
nvdisasm; no GPU, no driver). To compile with another Triton than the importable one, install it separately and
name the folder, e.g. for the Triton that torch 2.13's CUDA build pins::

    pip install --target /tmp/triton371 triton==3.7.1
    python scripts/kernel_cost.py --triton-path /tmp/triton371 --triton-path default

Examples::

    python scripts/kernel_cost.py                      # the importable Triton, sm_90 and sm_80, table + CSV
    python scripts/kernel_cost.py --arch 90 --no-csv   # sm_90 only, print only
    python scripts/kernel_cost.py --generations v3 --configs 2048x8 4096x8   # other forward blocks of v3
    python scripts/kernel_cost.py --triton-path /tmp/triton371 --triton-path default

Results are printed and appended to ``benchmarks/kernel_cost.csv`` (date, Triton version, target; one row per pass
and one ``total`` row per kernel variant).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))

from benchlib import append_csv, environment, fmt, print_table  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# H100 SXM5 figures used by the estimate (stated, not measured here).
# ----------------------------------------------------------------------------------------------------------------
HBM_BYTES_PER_S = 3.35e12  # HBM3 peak
NUM_SMS = 132
CLOCK_HZ = 1.755e9  # sustained SM clock under load (boost is 1.98 GHz)
MEMORY_LATENCY_S = 600e-9  # loaded DRAM latency, for the bytes-in-flight check
# Warp instructions per SM-cycle: 4 schedulers issue one each; FP32 128 lanes, INT32 64 lanes, MUFU 16 lanes; the
# shared-memory / shuffle / vote-atomic path (MIO) taken as one warp instruction per cycle.
ISSUE_PER_CYCLE = 4.0
FLOAT_PER_CYCLE = 4.0
INT_PER_CYCLE = 2.0
MUFU_PER_CYCLE = 0.5
MIO_PER_CYCLE = 1.0
REGISTERS_PER_SM = 65536
SHARED_PER_SM = 228 * 1024
MAX_WARPS_PER_SM = 64
MAX_PROGRAMS_PER_SM = 32

BYTES_PER_SM_CYCLE = HBM_BYTES_PER_S / (NUM_SMS * CLOCK_HZ)

#: Earlier kernels, from git: v1 (4 full passes for float32, a histogram of every element in each) and v2 (the row max
#: in the first pass, the float32 select finished on a candidate buffer after two digit passes).
BASELINE_REV = "e6e7fef"
V2_REV = "c26a80a"
#: Trip counts of the v3 forward's loops that do not read the row: the sample bisection finds a 16-bit prefix (16
#: steps); the candidate bisection runs one step per bit of the interval's key span, ~20 for the interval of a
#: typical row (about 0.1 in value at magnitude ~1-4, ~2^20 float32 keys), stated here as an assumption.
V3_SAMPLE_STEPS = 16
V3_CANDIDATE_STEPS = 20

VOCAB = 151_936
TOKENS = 4096
CLAMP_P = 0.33

FIELDS = [
    "date_utc",
    "device",
    "triton",
    "arch",
    "kernel",
    "variant",
    "dtype",
    "vocab",
    "block",
    "warps",
    "registers",
    "spill_bytes",
    "shared_bytes",
    "programs_per_sm",
    "pass",
    "loop_instructions",
    "int_per_elem",
    "float_per_elem",
    "mufu_per_elem",
    "vote_atomic_per_elem",
    "memory_per_elem",
    "control_per_elem",
    "load_width_bits",
    "alu_cycles_per_elem",
    "mem_cycles_per_elem",
    "bound",
    "est_ms_T4096",
    "note",
]

# ----------------------------------------------------------------------------------------------------------------
# Worker: compile and read the SASS (runs under the Triton being measured).
# ----------------------------------------------------------------------------------------------------------------

CLASSES = {
    "vote_atomic": ("VOTE", "VOTEU", "ATOMS", "ATOM", "ATOMG", "RED", "REDUX", "MATCH", "SHFL"),
    "memory": ("LDG", "STG", "LDS", "STS", "LD", "ST", "LDL", "STL", "LDSM", "LDGSTS", "ULDC", "LDC"),
    "control": (
        "BRA",
        "BAR",
        "BSSY",
        "BSYNC",
        "WARPSYNC",
        "NOP",
        "EXIT",
        "YIELD",
        "DEPBAR",
        "MEMBAR",
        "ERRBAR",
        "CCTL",
        "BPT",
        "RET",
        "CALL",
        "JMP",
        "BREAK",
    ),
}
FLOAT_PREFIXES = ("F", "MUFU", "HADD", "HMUL", "HFMA", "HSET", "HMNMX", "I2F", "DADD", "DMUL", "DFMA")


def classify(opcode: str) -> str:
    base = opcode.split(".")[0]
    for name, members in CLASSES.items():
        if base in members:
            return name
    if base == "MUFU":
        return "mufu"
    if base.startswith(FLOAT_PREFIXES) and base not in ("FLO",):
        return "float"
    return "int"


_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:\{\s*)?(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*?);")
_LABEL = re.compile(r"^(\.L_x_\d+):")


def parse_sass(text: str):
    """[(address, opcode, operands)], {label: address}."""
    instructions, labels, pending = [], {}, []
    for line in text.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            pending.append(label.group(1))
            continue
        match = _INSTRUCTION.search(line)
        if match:
            address = int(match.group(1), 16)
            for name in pending:
                labels[name] = address
            pending = []
            instructions.append((address, match.group(3), match.group(4)))
    return instructions, labels


def find_loops(instructions, labels):
    """Outermost loops (backward branches), in address order: [(start, end)]. A backward branch over the kernel's
    last EXIT is no loop: it returns from out-of-line code placed after the end of the kernel (e.g. the slow path
    of a warp shuffle under divergence, WARPSYNC.COLLECTIVE) to where that code was branched to."""
    loops = []
    last_exit = max((address for address, opcode, _ in instructions if opcode == "EXIT"), default=None)
    for address, opcode, operands in instructions:
        if opcode.startswith("BRA"):
            target = re.search(r"\(?(\.L_x_\d+)\)?", operands)
            if target and labels.get(target.group(1), address + 1) < address:
                start = labels[target.group(1)]
                if last_exit is None or not start <= last_exit < address:
                    loops.append((start, address))
    outer = [loop for loop in loops if not any(o[0] <= loop[0] and loop[1] <= o[1] and o != loop for o in loops)]
    return sorted(set(outer))


FEATURES = {"max": ("FMNMX",), "exp": ("MUFU",), "store": ("STG",)}


def name_loops(instructions, spans, passes):
    """Match the loops to the passes: a pass with a feature (the row max, an exponential, a global store) takes the
    loop with that instruction, the others the remaining loops in address order. When the compiler laid out fewer
    or more loops than passes, the featured passes are still matched and the other loops numbered. ([names], note)."""
    opcodes = [{op.split(".")[0] for address, op, _ in instructions if a <= address <= b} for a, b in spans]
    names: List[Optional[str]] = [None] * len(spans)
    for name, feature in passes:
        if feature is not None:
            hits = [i for i, ops in enumerate(opcodes) if names[i] is None and ops & set(FEATURES[feature])]
            if feature == "exp":  # the candidate pass also has exponentials: prefer a loop without stores
                hits = [i for i in hits if "STG" not in opcodes[i]] or hits
            if hits:
                names[hits[0]] = name
    note = ""
    if len(spans) != len(passes):
        note = f"{len(spans)} loops found, {len(passes)} expected"
        rest = iter(f"loop {i + 1}" for i in range(len(spans)))
    else:
        rest = iter(name for name, feature in passes if name not in names)
    return [name if name is not None else next(rest) for name in names], note


def count_classes(instructions, start, end) -> Dict[str, int]:
    counts = {"int": 0, "float": 0, "mufu": 0, "vote_atomic": 0, "memory": 0, "control": 0, "total": 0}
    widest = 0
    for address, opcode, _ in instructions:
        if start <= address <= end:
            counts[classify(opcode)] += 1
            counts["total"] += 1
            if opcode.startswith("LDG"):
                width = re.search(r"\.(128|64|U16|16|U8|8)\b", opcode)
                widest = max(widest, int(width.group(1).lstrip("U")) if width else 32)
    counts["load_width_bits"] = widest
    return counts


def resource_usage(cubin: bytes, tools: Path) -> Dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        usage = subprocess.run(
            [str(tools / "cuobjdump"), "--dump-resource-usage", handle.name], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run([str(tools / "nvdisasm"), "-c", handle.name], capture_output=True, text=True, check=True)
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return {
        "registers": int(fields["REG"]),
        "spill_bytes": int(fields["STACK"]) + int(fields["LOCAL"]),
        "static_shared": int(fields["SHARED"]),
        "sass": sass.stdout,
    }


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compile_variant(module, kernel_name: str, args: tuple, constants: dict, num_warps: int, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = getattr(module, kernel_name)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(constants, num_warps=num_warps)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def variants(module, generation: str, vocab: int, block: Optional[int], warps: int):
    """(kernel, variant, dtype, args, constants, warps, passes, bytes per element per pass) to compile. ``block``
    None: the kernel's own default for each dtype."""
    import torch
    from triton.runtime.jit import MockTensor

    k = math.floor(CLAMP_P * vocab)
    out = []
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        size = dtype.itemsize
        ptr = MockTensor(dtype)
        f32 = MockTensor(torch.float32)
        key_bits = 32 if dtype == torch.float32 else 16
        common = dict(KEY_BITS=key_bits, IS_BF16=dtype == torch.bfloat16, SELECT=True, COL_CONTIGUOUS=True)
        forward_block = block or (module.FORWARD_BLOCK_BYTES // size if generation == "v3" else 2048)
        loops = {}
        if generation == "v1":
            args = (ptr, vocab, 1, vocab, k, f32, f32, f32, f32)
            constants = dict(common, BLOCK=forward_block)
            names = [(f"digit {i + 1}", None) for i in range(key_bits // 8 - 1)] + [("last digit + softmax", "exp")]
            used = [name for name, _ in names]
        elif generation == "v2":
            args = (ptr, vocab, 1, vocab, k, f32, f32, f32, f32, f32, f32)
            constants = dict(
                common,
                HAS_ROW_MASK=False,
                BLOCK=forward_block,
                CANDIDATES=module.CANDIDATES,
                CANDIDATE_DEPTH=module.CANDIDATE_DEPTH,
            )
            if key_bits == 32:
                names = [
                    ("max + digit 1", "max"),
                    ("digit 2", None),
                    ("digit 3 (fallback)", None),
                    ("softmax + candidates", "store"),
                    ("last digit + softmax (fallback)", "exp"),
                ]
                used = ["max + digit 1", "digit 2", "softmax + candidates"]
            else:
                names = [("max + digit 1", "max"), ("last digit + softmax", "exp")]
                used = [name for name, _ in names]
        else:
            args = (ptr, vocab, 1, vocab, k, f32, MockTensor(torch.int32), f32, f32, f32, f32, f32)
            lane_width = 16 // size
            constants = dict(
                common,
                HAS_ROW_MASK=False,
                BLOCK=forward_block,
                LANE_WIDTH=lane_width,
                SAMPLE_GROUP=2 * lane_width,
                SAMPLE=module.SAMPLE,
                PIVOTS=module.PIVOTS[size],
                CANDIDATES=module.CANDIDATES,
                CANDIDATE_DEPTH=module.CANDIDATE_DEPTH,
            )
            digits = [(f"digit {i + 1} (fallback)", None) for i in range(key_bits // 8 - 1)]
            names = [("max + counts", "max"), ("softmax + candidates", "store")] + digits
            names.append(("last digit + softmax (fallback)", "exp"))
            used = ["max + counts", "softmax + candidates"]
            # Loops that do not read the row, in address order, with their trip counts per row.
            loops = {"sample bisection": V3_SAMPLE_STEPS, "candidate bisection": V3_CANDIDATE_STEPS}
        out.append(
            dict(
                kernel="forward",
                dtype=dtype_name,
                args=args,
                constants=constants,
                warps=warps,
                block=forward_block,
                passes=names,
                used=used,
                row_loops=loops,
                bytes_per_elem=size,
            )
        )
        bwd_args = (ptr, vocab, 1, ptr, vocab, vocab, f32, 1, f32, f32, f32, f32)
        bwd_constants = dict(COL_CONTIGUOUS=True, BLOCK=module.BACKWARD_BLOCK)
        if generation != "v1":
            bwd_args = (ptr, vocab, 1, ptr, vocab, vocab, f32, 1, f32, f32, f32, f32, f32)
            bwd_constants["HAS_ROW_MASK"] = False
        if generation == "v3":
            bwd_constants["LANE_WIDTH"] = 16 // size
        out.append(
            dict(
                kernel="backward",
                dtype=dtype_name,
                args=bwd_args,
                constants=bwd_constants,
                warps=module.BACKWARD_WARPS,
                block=module.BACKWARD_BLOCK,
                passes=[("read + write", None)],
                used=["read + write"],
                row_loops={},
                bytes_per_elem=2 * size,
            )
        )
    return out


def programs_per_sm(registers: int, shared: int, warps: int) -> int:
    per_warp = math.ceil(registers / 8) * 8 * 32
    by_registers = REGISTERS_PER_SM // (per_warp * warps)
    by_shared = SHARED_PER_SM // (shared + 1024) if shared else MAX_PROGRAMS_PER_SM
    return max(0, min(by_registers, by_shared, MAX_WARPS_PER_SM // warps, MAX_PROGRAMS_PER_SM))


def estimate_pass(counts: Dict[str, int], warps: int, block: int, bytes_per_elem: int, programs: int):
    scale = warps / block  # warp instructions per element = body length x warps / elements per iteration
    per = {name: counts[name] * scale for name in ("int", "float", "mufu", "vote_atomic", "memory", "control")}
    alu = max(
        counts["total"] * scale / ISSUE_PER_CYCLE,
        per["int"] / INT_PER_CYCLE,
        per["float"] / FLOAT_PER_CYCLE,
        per["mufu"] / MUFU_PER_CYCLE,
        (per["vote_atomic"] + per["memory"]) / MIO_PER_CYCLE,
    )
    mem = bytes_per_elem / BYTES_PER_SM_CYCLE
    # Little's law: one block's loads in flight per program (no software pipelining of these loops).
    needed = HBM_BYTES_PER_S / NUM_SMS * MEMORY_LATENCY_S
    in_flight = programs * block * (bytes_per_elem if bytes_per_elem <= 4 else bytes_per_elem / 2)
    latency_factor = max(1.0, needed / in_flight) if in_flight else float("inf")
    mem *= latency_factor
    return per, alu, mem, latency_factor


def worker(
    generation: str, source: Path, arch: int, block: Optional[int], warps: int, vocab: int = VOCAB
) -> List[Dict[str, object]]:
    import triton

    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    module = load_module(source, f"aent_kernel_cost_{generation}")
    rows = []
    for v in variants(module, generation, vocab, block, warps):
        name = "_clamped_entropy_forward_kernel" if v["kernel"] == "forward" else "_clamped_entropy_backward_kernel"
        base = dict(
            triton=triton.__version__,
            arch=f"sm_{arch}",
            kernel=v["kernel"],
            variant=generation,
            dtype=v["dtype"],
            vocab=vocab,
            block=v["block"],
            warps=v["warps"],
        )
        try:
            compiled = compile_variant(module, name, v["args"], v["constants"], v["warps"], arch)
        except Exception as error:  # reported as a row: the compile itself is a result
            rows.append(dict(base, note=f"compile failed: {type(error).__name__}: {str(error)[:160]}"))
            continue
        usage = resource_usage(compiled.asm["cubin"], tools)
        shared = max(int(compiled.metadata.shared), usage["static_shared"])
        programs = programs_per_sm(usage["registers"], shared, v["warps"])
        resources = dict(
            registers=usage["registers"],
            spill_bytes=usage["spill_bytes"],
            shared_bytes=shared,
            programs_per_sm=programs,
        )
        instructions, labels = parse_sass(usage["sass"])
        if v["kernel"] == "backward":
            spans, row_loops = [(instructions[0][0], instructions[-1][0])], []
        else:
            spans, row_loops = split_loops(instructions, find_loops(instructions, labels))
        names, note = name_loops(instructions, spans, v["passes"])
        loop_names = list(v["row_loops"])
        if len(row_loops) != len(loop_names):
            note = "; ".join(
                filter(None, [note, f"{len(row_loops)} loops without row loads, {len(loop_names)} expected"])
            )
            loop_names = [f"row loop {i + 1}" for i in range(len(row_loops))]
        total_ms = 0.0
        for pass_name, (start, end) in zip(names, spans):
            counts = count_classes(instructions, start, end)
            per, alu, mem, latency = estimate_pass(counts, v["warps"], v["block"], v["bytes_per_elem"], programs)
            used = pass_name in v["used"]
            ms = max(alu, mem) * TOKENS * vocab / NUM_SMS / CLOCK_HZ * 1e3
            if used:
                total_ms += ms
            rows.append(
                dict(
                    base,
                    **resources,
                    **{"pass": pass_name},
                    loop_instructions=counts["total"],
                    **{f"{k}_per_elem": fmt(val, 3) for k, val in per.items()},
                    load_width_bits=counts["load_width_bits"],
                    alu_cycles_per_elem=fmt(alu, 3),
                    mem_cycles_per_elem=fmt(mem, 3),
                    bound="ALU" if alu > mem else "memory",
                    est_ms_T4096=fmt(ms, 2),
                    note="; ".join(
                        filter(
                            None,
                            [
                                note,
                                "" if used else "not run for ordinary rows",
                                f"memory side x{latency:.1f} for latency" if latency > 1 else "",
                            ],
                        )
                    ),
                )
            )
        if v["kernel"] == "forward":
            # Work once per row: the loops that do not read the row (times their trip count) and every instruction
            # outside all loops (an upper bound: it includes the fallback's straight-line code).
            looped = spans + row_loops
            outside = [(a, a) for a, _, _ in instructions if not any(s <= a <= e for s, e in looped)]
            parts = [("straight-line code", outside, 1)]
            parts += [(name, [span], v["row_loops"].get(name, 1)) for name, span in zip(loop_names, row_loops)]
            for part_name, part_spans, trips in parts:
                counts = {}
                for start, end in part_spans:
                    for key, value in count_classes(instructions, start, end).items():
                        counts[key] = counts.get(key, 0) + value
                cycles = row_cycles(counts, v["warps"]) * trips
                ms = cycles * TOKENS / NUM_SMS / CLOCK_HZ * 1e3
                total_ms += ms
                rows.append(
                    dict(
                        base,
                        **resources,
                        **{"pass": f"per row: {part_name}"},
                        loop_instructions=counts["total"],
                        est_ms_T4096=fmt(ms, 2),
                        note=f"{trips} x {counts['total']} warp instructions x {v['warps']} warps, "
                        f"{cycles:.0f} SM-cycles per row (issue and pipes only; latency not counted)",
                    )
                )
        rows.append(
            dict(
                base,
                **resources,
                **{"pass": "total (passes run)"},
                est_ms_T4096=fmt(total_ms, 2),
                note=note,
            )
        )
    return rows


def split_loops(instructions, spans):
    """(loops that read the row: passes, loops that do not). A pass has a global load (LDG) in its body."""
    passes, others = [], []
    for start, end in spans:
        reads = any(op.startswith("LDG") for address, op, _ in instructions if start <= address <= end)
        (passes if reads else others).append((start, end))
    return passes, others


def row_cycles(counts: Dict[str, int], warps: int) -> float:
    """SM-cycles of code every warp of a program runs once: the slowest of the issue slots and the pipes."""
    return max(
        counts["total"] * warps / ISSUE_PER_CYCLE,
        counts["int"] * warps / INT_PER_CYCLE,
        counts["float"] * warps / FLOAT_PER_CYCLE,
        counts["mufu"] * warps / MUFU_PER_CYCLE,
        (counts["vote_atomic"] + counts["memory"]) * warps / MIO_PER_CYCLE,
    )


# ----------------------------------------------------------------------------------------------------------------
# Driver: one worker process per Triton.
# ----------------------------------------------------------------------------------------------------------------


def git_source(rev: str, generation: str, folder: Path) -> Path:
    text = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:aent/ops/triton_entropy.py"], capture_output=True, text=True
    )
    if text.returncode != 0:
        raise SystemExit(f"{generation} at {rev}: git cannot read aent/ops/triton_entropy.py: {text.stderr.strip()}")
    path = folder / f"triton_entropy_{generation}.py"
    path.write_text(text.stdout)
    return path


def run_worker(triton_path: str, job: dict) -> List[Dict[str, object]]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if triton_path != "default":
        if not (Path(triton_path) / "triton").is_dir():
            raise SystemExit(f"--triton-path {triton_path}: no triton package there (pip install --target DIR ...)")
        env["PYTHONPATH"] = os.pathsep.join([triton_path, str(REPO), env.get("PYTHONPATH", "")])
    else:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise SystemExit(f"compiling with Triton from {triton_path} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


TABLE = [
    "triton",
    "arch",
    "kernel",
    "variant",
    "dtype",
    "registers",
    "spill_bytes",
    "programs_per_sm",
    "pass",
    "int_per_elem",
    "float_per_elem",
    "vote_atomic_per_elem",
    "memory_per_elem",
    "load_width_bits",
    "alu_cycles_per_elem",
    "mem_cycles_per_elem",
    "bound",
    "est_ms_T4096",
    "note",
]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--triton-path",
        action="append",
        help="folder holding a Triton to compile with ('default' = the importable one); repeatable",
    )
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="compute capabilities (default 90 80)")
    parser.add_argument(
        "--generations",
        nargs="+",
        choices=["v1", "v2", "v3"],
        default=["v1", "v2", "v3"],
        help=f"kernels to compile: v1 (git {BASELINE_REV}), v2 (git {V2_REV}), v3 (the working tree); default all",
    )
    parser.add_argument("--configs", nargs="+", help="forward BLOCKxWARPS of the current kernel (default: its own)")
    parser.add_argument(
        "--vocab",
        type=int,
        default=VOCAB,
        help=f"V, also the row stride (default {VOCAB:,}); one not divisible by 16 shows how such rows are read",
    )
    parser.add_argument("--csv", type=Path, default=REPO / "benchmarks" / "kernel_cost.csv")
    parser.add_argument("--no-csv", action="store_true", help="print only")
    parser.add_argument(
        "--on-device",
        action="store_true",
        help="CUDA machine: run the kernels once at V = 151,936 and print the registers and spills the driver "
        "reports, to check the figures compiled here",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        rows = worker(job["generation"], Path(job["source"]), job["arch"], job["block"], job["warps"], job["vocab"])
        print(json.dumps(rows))
        return 0
    if args.on_device:
        return on_device()
    if importlib.util.find_spec("triton") is None and not args.triton_path:
        raise SystemExit("needs Triton (pip install triton), or --triton-path DIR naming a separately installed one")
    current = REPO / "aent" / "ops" / "triton_entropy.py"
    env = {k: v for k, v in environment("cpu").items() if k in ("date_utc", "device")}
    rows: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory() as folder:
        jobs = []
        for generation, rev in (("v1", BASELINE_REV), ("v2", V2_REV)):
            if generation in args.generations:
                source = str(git_source(rev, generation, Path(folder)))
                jobs.append(dict(generation=generation, source=source, block=2048, warps=8))
        for config in (args.configs or [None]) if "v3" in args.generations else []:
            if config is None:
                block, warps = None, _default_warps(current)  # the kernel's own block per dtype
            else:
                block, warps = (int(v) for v in config.lower().split("x"))
            jobs.append(dict(generation="v3", source=str(current), block=block, warps=warps))
        for triton_path in args.triton_path or ["default"]:
            for arch in args.arch:
                for job in jobs:
                    spec = dict(job, arch=arch, vocab=args.vocab)
                    rows += [dict(env, **row) for row in run_worker(triton_path, spec)]
    print(
        f"# estimates from compiled code, not GPU times: H100 SXM {HBM_BYTES_PER_S / 1e12:.2f} TB/s, {NUM_SMS} SMs, "
        f"{CLOCK_HZ / 1e9:.3f} GHz ({BYTES_PER_SM_CYCLE:.2f} B per SM-cycle), T = {TOKENS}, V = {args.vocab}, p = {CLAMP_P}"
    )
    print_table(rows, TABLE)
    if not args.no_csv:
        append_csv(args.csv, rows, FIELDS)
        print(f"# appended {len(rows)} rows to {args.csv}")
    return 0


def on_device() -> int:
    """Registers and spills of each compiled kernel variant as the CUDA driver reports them (a device check)."""
    import torch
    import triton

    if not torch.cuda.is_available():
        raise SystemExit("--on-device needs a CUDA device")
    sys.path.insert(0, str(REPO))
    from aent.ops import triton_entropy as te

    k = math.floor(CLAMP_P * VOCAB)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(4, VOCAB, device="cuda").to(dtype).requires_grad_()
        te.clamped_entropy_rows(x, k).sum().backward()
    torch.cuda.synchronize()
    print(
        f"# Triton {triton.__version__}, {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})"
    )
    for kernel in (te._clamped_entropy_forward_kernel, te._clamped_entropy_backward_kernel):
        for cache in getattr(kernel, "device_caches", {}).values():
            compiled_kernels = cache[0] if isinstance(cache, tuple) else cache
            for compiled in compiled_kernels.values():
                constants = getattr(compiled.src, "constants", {}) if hasattr(compiled, "src") else {}
                print(
                    f"{kernel.__name__}: registers {getattr(compiled, 'n_regs', '?')}, spills "
                    f"{getattr(compiled, 'n_spills', '?')}, shared {compiled.metadata.shared} B, "
                    f"warps {compiled.metadata.num_warps} {constants or ''}"
                )
    return 0


def _default_warps(source: Path) -> int:
    return int(re.search(r'AENT_TRITON_FORWARD_WARPS", "(\d+)"', source.read_text()).group(1))


if __name__ == "__main__":
    sys.exit(main())
