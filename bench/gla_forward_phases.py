#!/usr/bin/env python3
"""What each phase of the chunked GLA forward's second pass costs, and builds compared.

Builds bench/gla_forward_phases.cu against copies of kernels/cuda/gla_chunked.cu with nvcc (no
CMake, no LibTorch) and prints one line per build and shape: mean ms of 70 calls and hashes of o
and of the final state (equal hashes: bit-identical results).

  python3 bench/gla_forward_phases.py --phases [--shapes 32768x1]
      GlaChunkKernel alone (pass 1 compiled out), once as is and once per phase compiled out:
      the producer warps' cumulative decays, q / k scaling, scores and loads of the next
      chunk's q, k, v; the consumer warps' state update, q St, A v and o stores; and all of
      the math at once. A phase's cost is the time it removes; the two roles overlap, so a
      phase off the slower role's path costs nothing.
  python3 bench/gla_forward_phases.py --revs 50c3353,HEAD [--shapes 32768x1,2048x16]
      whole forwards of the file at each git revision (or the working tree: "."), run
      alternately, twice each. An entry may also be the path of a candidate copy of the file,
      and may carry preprocessor definitions after '+': "cand.cu+REGS=200+FAST" builds
      cand.cu with -DREGS=200 -DFAST.

Run from the repository root on a machine with a GPU and nvcc; BENCHMARKS.md ("Session 16") has
the numbers. The phase markers are source text of the kernel: a marker that is gone stops the
script with its name.
"""
import argparse
import concurrent.futures
import os
import subprocess
import sys

KERNEL = "kernels/cuda/gla_chunked.cu"
HARNESS = "bench/gla_forward_phases.cu"

# (name, first line of the region, last line of the region, replacement or None): the region is
# compiled out under SKIP_<NAME>, or replaced by the given text. Searched inside GlaChunkKernel.
PHASES = [
    ("cumsum", "      if (ptid < K) wide = WsCumsumColumn<K, V>(bs, anchor, last, ptid);",
     "      if (ptid < K) wide = WsCumsumColumn<K, V>(bs, anchor, last, ptid);",
     "      if (ptid < K) anchor[ptid] = last[ptid] = 0.f;"),
    ("scale",
     "        ScaleChunk<K, L::kKP, L::kBP, kWsProducers, kWsUnroll>(qs, ks, bs, ptid, true);",
     "        ScaleChunk<K, L::kKP, L::kBP, kWsProducers, kWsUnroll>(qs, ks, bs, ptid, true);",
     None),
    ("scores", "        for (int idx = pwarp; idx < 10; idx += kWsProducers / 32) {",
     "StoreCausalScores<L::kAP>(as, 16 * i + g8, 16 * j + 8 + 2 * t4, acc1);", None),
    ("load", "      load_qkv(c + 1);", "      load_qkv(c + 1);",
     "      CpAsyncCommit();  // (the next chunk's q, k, v not loaded; the wait counts kept)"),
    ("state", "      UpdateChunkState<kSN, L::kKP, L::kVP>(S, ks, vs, 16 * rb,",
     "                                            cs * (V / kCS), lane);", None),
    ("qst", "          frag::LoadA(a, qs, L::kKP, 16 * i, 16 * kk, lane);",
     "            Mma(acc[2 * jp + 1], a, b[2], b[3]);", None),
    ("av", "        for (int jj = 0; jj <= i; ++jj) {",
     "          Mma(acc[2 * jp + 1], a, b[2], b[3]);", None),
    ("store", "            if (t0 + 16 * i + row < T) {",
     "            if (t0 + 16 * i + row < T) {",
     "            if (args.scale == 12345.f) {"
     "  // (never: the stores stay, their data too)"),
]
PASS1 = ("pass1", "  if (nseg > 1) {", "  if (nseg > 1) {", "  if (false) {")


def balanced_end(lines, first, last_text):
    """Index of the line closing the block that contains lines[first..] up to last_text."""
    i = first
    while last_text not in lines[i]:
        i += 1
    # Extend to the end of every brace opened inside the region.
    depth = sum(l.count("{") - l.count("}") for l in lines[first:i + 1])
    while depth > 0:
        i += 1
        depth += lines[i].count("{") - lines[i].count("}")
    return i


def instrument(src):
    """The kernel with #if guards around each phase (SKIP_<NAME>) and around pass 1's launch."""
    lines = src.split("\n")
    # Phases are searched in source order, each after the previous one's first line.
    after = next(i for i, l in enumerate(lines) if "GlaChunkKernel(const KernelArgs args)" in l)
    for name, first, last, repl in PHASES + [PASS1]:
        start = after if name != "pass1" else 0
        hits = [i for i in range(start, len(lines)) if lines[i].startswith(first)]
        if hits and name != "pass1":
            after = hits[0] + 1
        if not hits:
            sys.exit(f"phase marker '{name}' not found in {KERNEL}: update PHASES")
        b = hits[0]
        e = balanced_end(lines, b, last) if repl is None else b
        macro = "SKIP_" + name.upper()
        if repl is None:
            lines[e] += "\n#endif"
            lines[b] = f"#ifndef {macro}\n" + lines[b]
        else:
            lines[b] = f"#ifdef {macro}\n{repl}\n#else\n{lines[b]}\n#endif"
    return "\n".join(lines)


def source_at(rev):
    if rev == ".":
        return open(KERNEL).read()
    if os.path.isfile(rev):
        return open(rev).read()
    return subprocess.run(["git", "show", f"{rev}:{KERNEL}"], check=True, capture_output=True,
                          text=True).stdout


def build(out_dir, name, src, defines, arch):
    path = os.path.join(out_dir, f"gla_{name}.cu")
    with open(path, "w") as f:
        f.write(src)
    exe = os.path.join(out_dir, f"gla_{name}")
    # -gencode with the arch's own virtual target (compute_90a for sm_90a), as CMake's "90a"
    # builds: -arch=sm_90a alone leaves the PTX at compute_90, which refuses setmaxnreg and wgmma.
    virt = arch.replace("sm_", "compute_")
    cmd = ["nvcc", "-O3", "-DNDEBUG", "-gencode", f"arch={virt},code={arch}",
           "--expt-relaxed-constexpr", "-std=c++17",
           "-I", "kernels/cuda", f'-DHYB_GLA_SOURCE="{os.path.abspath(path)}"',
           *[f"-D{d}" for d in defines], "-o", exe, HARNESS]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"build {name} failed:\n{r.stderr[-3000:]}")
    return exe


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--phases", action="store_true", help="pass-2 phase costs")
    mode.add_argument("--revs", help="comma-separated git revisions ('.' = working tree) or "
                      "candidate files, each optionally followed by +NAME=VALUE definitions")
    ap.add_argument("--shapes", default="32768x1", help="TOKENSxBATCH,... (16 heads, dims 128)")
    ap.add_argument("--arch", default="sm_90a")
    ap.add_argument("--out-dir", default="/tmp/gla_forward_phases")
    ap.add_argument("--build-only", action="store_true", help="compile the builds, run nothing")
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    shapes = [s.split("x") for s in a.shapes.split(",")]
    jobs = []  # (label, source, defines)
    if a.phases:
        src = instrument(open(KERNEL).read())
        math = ["cumsum", "scale", "scores", "state", "qst", "av"]  # all but loads and stores
        jobs.append(("none", src, ["SKIP_PASS1"]))
        jobs += [(p[0], src, ["SKIP_PASS1", "SKIP_" + p[0].upper()]) for p in PHASES]
        jobs.append(("all-math", src, ["SKIP_PASS1"] + ["SKIP_" + n.upper() for n in math]))
    else:
        for entry in a.revs.split(","):
            rev, *defines = entry.split("+")
            if rev == ".":
                label = "tree"
            elif os.path.isfile(rev):
                label = os.path.splitext(os.path.basename(rev))[0]
            else:
                label = rev.replace("/", "_")
            label = "+".join([label] + defines).replace("=", "")
            jobs.append((label, source_at(rev), defines))
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        exes = list(pool.map(lambda j: build(a.out_dir, j[0], j[1], j[2], a.arch), jobs))
    if a.build_only:
        print("\n".join(exes))
        return
    rounds = 1 if a.phases else 2
    for t, b in shapes:
        for _ in range(rounds):
            for (name, _, _), exe in zip(jobs, exes):
                label = "removed " + name if a.phases else name
                try:  # (a candidate that deadlocks must not stop the others)
                    r = subprocess.run([exe, t, b, label], capture_output=True, text=True,
                                       timeout=120)
                    print(r.stdout.strip() or r.stderr.strip(), flush=True)
                except subprocess.TimeoutExpired:
                    print(f"{label} T={t} B={b}: no result within 120 s", flush=True)


if __name__ == "__main__":
    main()
