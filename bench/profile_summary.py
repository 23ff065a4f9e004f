"""Where the GPU time of a traced step goes, from a `jax.profiler.trace` directory.

  python launch/benchmark.py --config=configs/0p5b_16b.py ... --profile_dir=/tmp/prof
  python bench/profile_summary.py /tmp/prof [--steps=3] [--top=40] [--hlo_dir=/tmp/hlo]

Reads the trace's XSpace with `jax.profiler.ProfileData` (no xprof/tensorboard needed), sums the
kernel time on each GPU stream, and prints it per step by kind (matmul, attention, XLA fusion,
copy, collective) and per kernel, the largest first. With --hlo_dir, the folder of XLA's dump of the
same run (XLA_FLAGS="--xla_dump_to=/tmp/hlo --xla_dump_hlo_as_text"), each XLA fusion also gets its
shape and the JAX operation it came from (its op_name), so a kernel named loop_add_fusion_23 says
which line of the model it is.
"""

import argparse
import collections
import glob
import os
import re

from jax.profiler import ProfileData

KINDS = (  # the first substring found in a kernel's name decides its kind
    ("attention", ("cudnn", "fmha", "flash", "sdpa")),
    ("collective", ("nccl",)),
    ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "cublas", "sm90_", "triton_gemm")),
    ("copy", ("memcpy", "memset", "copy")),
)


def kind_of(kernel: str) -> str:
    name = kernel.lower()
    return next((kind for kind, keys in KINDS if any(k in name for k in keys)), "XLA fusion / other")


def kernel_key(name: str) -> str:
    """A kernel's name as a trace spells it and its fusion's name in HLO text agree once . and - are _."""
    return re.sub(r"[.\-]", "_", name)


def fusion_origins(hlo_dir: str, module: str = "jit_step") -> dict[str, str]:
    """{kernel_key(fusion name): "SHAPE OP_NAME"} from the optimized HLO of `module` in an XLA dump (the
    train step's is jit_step; the largest such file, where it was compiled more than once)."""
    dumps = glob.glob(os.path.join(hlo_dir, f"*.{module}.*after_optimizations.txt"))
    if not dumps:
        raise SystemExit(f"error: no *.{module}.*after_optimizations.txt under {hlo_dir}: run with "
                         f'XLA_FLAGS="--xla_dump_to={hlo_dir} --xla_dump_hlo_as_text"')
    text = open(max(dumps, key=os.path.getsize)).read()
    instruction = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|\S+) (?:fusion|custom-call)\(.*?op_name="([^"]*)"',
                             re.MULTILINE)
    return {kernel_key(name): f"{shape} {op_name}" for name, shape, op_name in instruction.findall(text)}


def summarize(trace_dir: str, steps: int, top: int, hlo_dir: str = "") -> None:
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
    if not paths:
        raise SystemExit(f"error: no *.xplane.pb under {trace_dir}: pass the --profile_dir of launch/benchmark.py")
    data = ProfileData.from_file(paths[-1])
    origins = fusion_origins(hlo_dir) if hlo_dir else {}
    by_kind, by_kernel, by_family, launches, by_op = (collections.Counter() for _ in range(5))
    intervals = []  # (start, end, kernel) of every kernel on GPU 0, for the idle time between them
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU:0"):
            continue
        for line in plane.lines:
            if not line.name.startswith("Stream"):
                continue
            for event in line.events:
                intervals.append((event.start_ns, event.start_ns + event.duration_ns, event.name))
                kernel, ms = event.name, event.duration_ns / 1e6 / steps  # a fusion's kernel carries its name
                by_kind[kind_of(kernel)] += ms
                by_kernel[kernel] += ms
                launches[kernel] += 1
                by_family[re.sub(r"[._]\d+$", "", kernel)] += ms
                # A library kernel (cuBLAS, cuDNN) is named for itself; its hlo_op stat names its HLO instruction.
                hlo_op = str(next((v for k, v in event.stats if k == "hlo_op"), kernel))
                by_op[origins.get(kernel_key(hlo_op), "(no op_name) " + hlo_op)] += ms
    total = sum(by_kind.values())
    if not total:
        raise SystemExit("error: no GPU stream events in the trace; planes and lines: " + "; ".join(
            f"{p.name}: {[line.name for line in p.lines]}" for p in data.planes))
    print(f"GPU kernel time per step: {total:.1f} ms (sum over streams, {steps} traced steps, {paths[-1]})")
    for kind, ms in by_kind.most_common():
        print(f"  {kind:20s} {ms:8.2f} ms  {ms / total:6.1%}")
    print_idle(intervals, steps)
    print_host(data.planes, steps)
    print(f"\ntop {top} kernel families (numbered copies summed; ms per step):")
    for family, ms in by_family.most_common(top):
        print(f"  {ms:8.2f} ms  {family[:110]}")
    print(f"\ntop {top} kernels (ms per step, launches per step; run with XLA_FLAGS=--xla_gpu_enable_command_buffer= "
          "so that each fusion is its own kernel):")
    for kernel, ms in by_kernel.most_common(top):
        origin = origins.get(kernel_key(kernel), "")
        print(f"  {ms:8.2f} ms  x{launches[kernel] / steps:<5.0f} {kernel[:110]}")
        if origin:
            print(f"{'':20}{origin[:200]}")
    if origins:
        print(f"\ntop {top} JAX operations (the kernels of each HLO instruction, by shape and op_name; ms per step):")
        for op, ms in by_op.most_common(top):
            print(f"  {ms:8.2f} ms  {re.sub(r'{[^}]*}', '', op)[:200]}")


def print_idle(intervals, steps: int, top: int = 12) -> None:
    """The GPU's idle time within the trace (its span less the union of kernel intervals, over all streams),
    and the longest idle stretches with the kernels either side: where the host or a dependency stalls it."""
    intervals.sort()
    gaps, busy_until, last = [], intervals[0][1], intervals[0][2]
    for start, end, name in intervals[1:]:
        if start > busy_until:
            gaps.append(((start - busy_until) / 1e6, last, name))
        if end > busy_until:
            busy_until, last = end, name
    span_ms = (busy_until - intervals[0][0]) / 1e6
    idle_ms = sum(g for g, _, _ in gaps)
    print(f"\nGPU idle: {idle_ms / steps:.2f} ms per step of a {span_ms / steps:.1f} ms span "
          f"({len(gaps) / steps:.0f} idle stretches a step); the longest (ms, after -> before):")
    for ms, after, before in sorted(gaps, reverse=True)[:top]:
        print(f"  {ms:7.3f}  {after[:60]} -> {before[:60]}")


def print_host(planes, steps: int, top: int = 15) -> None:
    """The host's time by event name, XLA's and PJRT's own (Python's, named "$file:line", left out): what
    launching a step costs, and where the host waits (a conditional's predicate, a wait for completion)."""
    totals, calls = collections.Counter(), collections.Counter()
    for plane in planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                if not event.name.startswith("$"):
                    totals[event.name] += event.duration_ns / 1e6 / steps
                    calls[event.name] += 1
    print(f"\nhost time by event (ms per step, calls per step; a nested event counts in its own line and its "
          f"parent's), top {top}:")
    for name, ms in totals.most_common(top):
        print(f"  {ms:8.2f} ms  x{calls[name] / steps:<5.0f} {name[:100]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace_dir")
    parser.add_argument("--steps", type=int, default=3, help="steps the trace holds (benchmark.py traces 3)")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--hlo_dir", default="", help="XLA's dump of the traced run (--xla_dump_to): fusions' origins")
    args = parser.parse_args()
    summarize(args.trace_dir, args.steps, args.top, args.hlo_dir)


if __name__ == "__main__":
    main()
