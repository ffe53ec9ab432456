"""Baseline for bench/gated_delta_bench and linear_attention_cuda_bench: fla's chunk_gated_delta_rule
(and, with `gla`, chunk_gla) forward at the inputs of ../shared/reference/linear_attention_ops.py
(32K tokens per batch, 16 heads, head dim 128, bf16, T in {2K, 8K, 32K}): the median of 20
CUDA-event timings, then torch.profiler's GPU time of each of fla's kernels per call, so that our
per-kernel `ncu` times have a counterpart. Needs torch and fla-org/flash-linear-attention's `fla/`
folder on PYTHONPATH (GPU machine); nothing in hybridize imports it.

  PYTHONPATH=DIR_WITH_FLA python3 bench/fla_gdn_profile.py [gdn][,gla] [HEAD_DIM]

HEAD_DIM (default 128; 64 or 256 for gated_delta_bench --dim) keeps 16 heads and 32K tokens.
"""
import statistics, sys, torch, torch.nn.functional as F
from torch.profiler import profile, ProfilerActivity
from fla.ops.gated_delta_rule import chunk_gated_delta_rule
from fla.ops.gla import chunk_gla
H, TOK = 16, 32768
D = int(sys.argv[2]) if len(sys.argv) > 2 else 128
def bench(fn, reps=20, warm=5):
    for _ in range(warm): fn()
    torch.cuda.synchronize(); ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    return statistics.median(ts)
ops = sys.argv[1].split(",") if len(sys.argv) > 1 else ["gdn"]
for T in (2048, 8192, 32768):
    B = TOK // T
    r = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16)
    q, v = r(B, T, H, D), r(B, T, H, D)
    k = F.normalize(r(B, T, H, D).float(), dim=-1).to(torch.bfloat16)
    for op in ops:
        if op == "gdn":
            g = F.logsigmoid(torch.randn(B, T, H, device="cuda"))
            beta = torch.rand(B, T, H, device="cuda", dtype=torch.bfloat16).sigmoid()
            fn = lambda: chunk_gated_delta_rule(q, k, v, g, beta)
        else:
            gk = F.logsigmoid(torch.randn(B, T, H, D, device="cuda")) / 16
            fn = lambda: chunk_gla(q, k, v, gk)
        with torch.no_grad():
            ms = bench(fn)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(10): fn()
                torch.cuda.synchronize()
        print(f"fla {op} T={T} B={B} D={D} fwd_ms={ms:.3f}", flush=True)
        for ev in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:12]:
            print(f"   {ev.device_time_total / 10 / 1000:8.3f} ms/call  x{ev.count / 10:.0f}  {ev.key[:90]}", flush=True)
