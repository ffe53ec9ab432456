// Host emulation of the chunked GLA forward's state-only first pass (GlaStatePassKernel in
// gla_chunked.cu) and the segment scan, checked against an fp64 recurrence. Runs without a GPU:
//   g++ -std=c++20 -O2 -I kernels/cuda kernels/cuda/gla_state_pass_host_check.cc -o /tmp/check
//   /tmp/check
// Not part of the build (the GPU tests, CudaGlaChunkedTest.* and CudaVarlenTest.*, cover the
// kernels themselves); it checks the index arithmetic the kernel shares (gla_state_pass.h) and the
// kernel's math order thread by thread:
//   - the grid: blocks (segment block, key block) x slices, mapped to (sequence, segment) as
//     SegmentOf in gla_chunked.cu does (copied here), for fixed-length and packed sequences;
//   - per block, the shared-memory tiles (k and g: 64 key columns, v: the slice's value columns,
//     rows past the sequence zero-filled), the cumulative decay in the kernel's runs and order;
//   - per thread, its fragments of the state (GlaStateOwnerOf) updated per chunk as mma.sync
//     does: k decayed and rounded to bf16, times v, 16 tokens per product (summed exactly here,
//     then rounded to fp32: the tensor core's own order within a product is not emulated);
//   - that every entry of every segment's state and decay is written exactly once;
//   - the scan (batches of kScanBatch loads, then the combines), against start states from an
//     fp64 recurrence over whole sequences.
// Exits non-zero when an error passes its bound.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "gla_state_pass.h"

namespace {

using hyb::kernels::cuda::GlaStateBlockOf;
using hyb::kernels::cuda::GlaStateCumsumParts;
using hyb::kernels::cuda::GlaStateKeyBlocks;
using hyb::kernels::cuda::GlaStateOwner;
using hyb::kernels::cuda::GlaStateOwnerOf;
using hyb::kernels::cuda::kGlaStateKeyRows;
using hyb::kernels::cuda::kGlaStateThreads;

constexpr int kC = 64;
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kScanBatch = 8;  // as GlaSegmentScanKernel

float RoundBf16(float x) {  // round to nearest even, as __float2bfloat16_rn
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  float y;
  std::memcpy(&y, &u, 4);
  return y;
}

struct Shape {
  const char* name;
  int KF, VF;
  int64_t heads;
  std::vector<int64_t> lengths;  // fixed-length: all equal; packed: any
  bool packed;
  int seg_chunks;
  bool initial_state;
};

// SegmentOf / FindSeq of gla_chunked.cu and varlen_seqs.cuh.
struct SegmentOfBlock {
  int64_t bh;
  int seg, nseg;
  int64_t slot;
};
int64_t FindSeq(const std::vector<int64_t>& offsets, int64_t num_seqs, int64_t i) {
  int64_t lo = 0, hi = num_seqs;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (offsets[mid] <= i) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

int Run(const Shape& sh, uint32_t seed) {
  const int KF = sh.KF, VF = sh.VF;
  const int K = KF > 128 ? 128 : KF, V = VF > 128 ? 128 : VF;  // GlaSliceDim
  const int kSlices = (KF / K) * (VF / V);
  const int kKeyBlocks = GlaStateKeyBlocks(K);
  const int64_t H = sh.heads, N = static_cast<int64_t>(sh.lengths.size());
  // Token rows: fixed [B, H, T, D]; packed [1, H, T_total, D] (GlaTokenRows).
  std::vector<int64_t> cu_seqlens(N + 1, 0);
  for (int64_t n = 0; n < N; ++n) cu_seqlens[n + 1] = cu_seqlens[n] + sh.lengths[n];
  const int64_t tokens = sh.packed ? cu_seqlens[N] : sh.lengths[0];
  const int64_t rows = sh.packed ? H : N * H;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(-1.f, 1.f), gate(0.f, 1.f);
  std::vector<float> k(rows * tokens * KF), v(rows * tokens * VF), g(rows * tokens * KF);
  for (auto& x : k) x = RoundBf16(uni(rng));
  for (auto& x : v) x = RoundBf16(uni(rng));
  // GLA's gates are logsigmoid(x) / 16; some near -0.5 make strong decays.
  for (auto& x : g) x = std::log(1.f / (1.f + std::exp(-6.f * uni(rng)))) / 16.f * gate(rng) * 4;
  std::vector<float> init(N * H * KF * VF, 0.f);
  if (sh.initial_state) {
    for (auto& x : init) x = uni(rng);
  }

  // Segments, as LaunchDims and GlaVarlenSegments.
  std::vector<int64_t> cu_chunks(N + 1, 0), cu_segments(N + 1, 0);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t c = (sh.lengths[n] + kC - 1) / kC;
    cu_chunks[n + 1] = cu_chunks[n] + c;
    cu_segments[n + 1] =
        cu_segments[n] + std::max<int64_t>(1, (c + sh.seg_chunks - 1) / sh.seg_chunks);
  }
  const int64_t total_segments = cu_segments[N];
  const int nchunks_fixed = static_cast<int>((tokens + kC - 1) / kC);
  const int nseg = sh.packed ? (total_segments > N ? 2 : 1)
                             : (nchunks_fixed + sh.seg_chunks - 1) / sh.seg_chunks;
  if (nseg < 2) {
    std::printf("%s: one segment, nothing to check\n", sh.name);
    return 1;
  }
  const int64_t bh_total = N * H;
  const int64_t slots = sh.packed ? total_segments * H : bh_total * nseg;
  const int grid_segs = nseg - 1;
  const int64_t blocks_pass1 = sh.packed ? total_segments * H : bh_total * (nseg - 1);

  auto segment_of = [&](int64_t x) -> SegmentOfBlock {
    if (!sh.packed) {
      const int64_t bh = x / grid_segs;
      const int seg = static_cast<int>(x % grid_segs);
      return {bh, seg, nseg, bh * nseg + seg};
    }
    const int64_t gs = x / H, h = x % H;
    const int64_t n = FindSeq(cu_segments, N, gs);
    const int64_t s0 = cu_segments[n];
    const int ns = static_cast<int>(cu_segments[n + 1] - s0);
    return {n * H + h, static_cast<int>(gs - s0), ns, s0 * H + h * ns + static_cast<int>(gs - s0)};
  };
  // SeqOf: (token row, first token, length) of sequence bh.
  auto seq_of = [&](int64_t bh, int64_t* row, int64_t* token0, int64_t* len) {
    if (!sh.packed) {
      *row = bh, *token0 = 0, *len = tokens;
    } else {
      const int64_t n = bh / H;
      *row = bh % H, *token0 = cu_seqlens[n], *len = sh.lengths[n];
    }
  };

  std::vector<float> seg_state(slots * KF * VF, NAN), seg_decay(slots * KF, NAN);
  std::vector<int> state_writes(slots * KF * VF, 0), decay_writes(slots * KF, 0);
  const int parts = GlaStateCumsumParts(K), run_rows = kC / parts;

  // Pass 1: every block of grid (blocks_pass1 * kKeyBlocks, kSlices).
  for (int64_t x = 0; x < blocks_pass1 * kKeyBlocks; ++x) {
    for (int y = 0; y < kSlices; ++y) {
      const int koff = (y / (VF / V)) * K, voff = (y % (VF / V)) * V;
      const auto blk = GlaStateBlockOf(x, kKeyBlocks);
      const SegmentOfBlock sb = segment_of(blk.segment_block);
      if (sb.seg == sb.nseg - 1) continue;
      int64_t row, token0, T;
      seq_of(sb.bh, &row, &token0, &T);
      const int nchunks = static_cast<int>((T + kC - 1) / kC);
      const int c_begin = sb.seg * sh.seg_chunks;
      const int c_end = std::min(c_begin + sh.seg_chunks, nchunks);
      const int krow = koff + kGlaStateKeyRows * blk.key_block;
      // Per thread: S[j][4] fragments and the two log decays.
      std::vector<float> S(kGlaStateThreads * (V / 16) * 4, 0.f);
      std::vector<float> dec(kGlaStateThreads * 2, 0.f);
      std::vector<float> kt(kC * 64), vt(kC * V), bt(kC * 64), tot(4 * 64);
      for (int c = c_begin; c < c_end; ++c) {
        const int64_t t0 = static_cast<int64_t>(c) * kC;
        for (int r = 0; r < kC; ++r) {  // CopyTile: rows past the end are zeros
          const bool ok = t0 + r < T;
          const int64_t tok = (row * tokens + token0 + t0 + r);
          for (int d = 0; d < 64; ++d) {
            kt[r * 64 + d] = ok ? k[tok * KF + krow + d] : 0.f;
            bt[r * 64 + d] = ok ? g[tok * KF + krow + d] : 0.f;
          }
          for (int e = 0; e < V; ++e) vt[r * V + e] = ok ? v[tok * VF + voff + e] : 0.f;
        }
        // CumsumLog2Rows<parts>: run p of column d, then the earlier runs' totals.
        std::vector<float> xs(kC * 64);
        for (int tid = 0; tid < parts * 64; ++tid) {
          const int d = tid % 64, p = tid / 64;
          float run = 0.f;
          for (int r = 0; r < run_rows; ++r) {
            run = std::fma(bt[(p * run_rows + r) * 64 + d], kLog2e, run);
            xs[(p * run_rows + r) * 64 + d] = run;
          }
          tot[p * 64 + d] = run;
        }
        for (int tid = 0; tid < parts * 64; ++tid) {
          const int d = tid % 64, p = tid / 64;
          float off = 0.f;
          for (int q = 0; q < p; ++q) off += tot[q * 64 + d];
          for (int r = 0; r < run_rows; ++r) {
            bt[(p * run_rows + r) * 64 + d] = xs[(p * run_rows + r) * 64 + d] + off;
          }
        }
        for (int tid = 0; tid < kGlaStateThreads; ++tid) {
          const GlaStateOwner own = GlaStateOwnerOf(tid, blk.key_block, koff, voff, V, VF);
          const int dr[2] = {own.d_lo, own.d_hi};
          float bc[2];
          for (int h2 = 0; h2 < 2; ++h2) {
            bc[h2] = bt[(kC - 1) * 64 + dr[h2]];
            dec[tid * 2 + h2] += bc[h2];
          }
          for (int j = 0; j < V / 16; ++j) {
            for (int i = 0; i < 4; ++i) {
              const int h2 = i / 2, col = own.col0 + 8 * j + i % 2;
              float& s = S[(tid * (V / 16) + j) * 4 + i];
              s *= std::exp2(bc[h2]);
              for (int kk = 0; kk < kC / 16; ++kk) {  // one mma.sync per 16 tokens
                double acc = 0;
                for (int t = 16 * kk; t < 16 * kk + 16; ++t) {
                  const float kh =
                      RoundBf16(kt[t * 64 + dr[h2]] * std::exp2(bc[h2] - bt[t * 64 + dr[h2]]));
                  acc += static_cast<double>(kh) * vt[t * V + col];
                }
                s = static_cast<float>(s + acc);
              }
            }
          }
        }
      }
      const int64_t base = sb.slot * KF * VF;
      for (int tid = 0; tid < kGlaStateThreads; ++tid) {
        const GlaStateOwner own = GlaStateOwnerOf(tid, blk.key_block, koff, voff, V, VF);
        for (int j = 0; j < V / 16; ++j) {
          for (int i = 0; i < 4; ++i) {
            const int64_t at = base + own.lo + 8 * j + (i / 2) * 8 * VF + i % 2;
            seg_state[at] = S[(tid * (V / 16) + j) * 4 + i];
            ++state_writes[at];
          }
        }
        const int warp = tid / 32, lane = tid % 32;
        if (warp / 4 == 0 && lane % 4 == 0 && voff == 0) {
          for (int h2 = 0; h2 < 2; ++h2) {
            const int64_t at = sb.slot * KF + krow + (h2 ? own.d_hi : own.d_lo);
            seg_decay[at] = dec[tid * 2 + h2];
            ++decay_writes[at];
          }
        }
      }
    }
  }

  // fp64 references: per sequence, the state at every segment start from the initial state, and
  // each segment's own state from zero with its log2 decay.
  double err_local = 0, err_chunked = 0, sum_chunked = 0, entries = 0, max_local = 0, err_dec = 0,
         err_start = 0, max_start = 0;
  int bad_writes = 0;
  std::vector<float> started = seg_state;  // the scan runs on a copy; seg_state keeps pass 1's
  for (int64_t bh = 0; bh < bh_total; ++bh) {
    int64_t row, token0, T;
    seq_of(bh, &row, &token0, &T);
    const int nchunks = static_cast<int>((T + kC - 1) / kC);
    int ns = nseg;
    int64_t slot0 = bh * nseg;
    if (sh.packed) {
      const int64_t n = bh / H, h = bh % H;
      ns = static_cast<int>(cu_segments[n + 1] - cu_segments[n]);
      slot0 = cu_segments[n] * H + h * ns;
    }
    // The scan (GlaSegmentScanKernel), one "thread" per state element.
    for (int64_t e = 0; e < static_cast<int64_t>(KF) * VF; ++e) {
      const int d = static_cast<int>(e / VF);
      float s = sh.initial_state ? init[bh * KF * VF + e] : 0.f;
      for (int i0 = 0; i0 < ns; i0 += kScanBatch) {
        float local[kScanBatch], decay[kScanBatch];
        for (int j = 0; j < kScanBatch; ++j) {
          const int i = i0 + j;
          if (i + 1 < ns) {
            local[j] = started[(slot0 + i) * KF * VF + e];
            decay[j] = seg_decay[(slot0 + i) * KF + d];
          }
        }
        for (int j = 0; j < kScanBatch; ++j) {
          const int i = i0 + j;
          if (i < ns) started[(slot0 + i) * KF * VF + e] = s;
          if (i + 1 < ns) s = std::exp2(decay[j]) * s + local[j];
        }
      }
    }
    std::vector<double> full(KF * VF), local(KF * VF), ldec(KF), chunked(KF * VF);
    for (int64_t e = 0; e < static_cast<int64_t>(KF) * VF; ++e) {
      full[e] = sh.initial_state ? init[bh * KF * VF + e] : 0.0;
    }
    for (int i = 0; i < ns; ++i) {
      const int c_begin = i * sh.seg_chunks;
      const int c_end = std::min(c_begin + sh.seg_chunks, nchunks);
      for (int64_t e = 0; e < static_cast<int64_t>(KF) * VF; ++e) {
        err_start = std::max(err_start, std::abs(started[(slot0 + i) * KF * VF + e] - full[e]));
        max_start = std::max(max_start, std::abs(full[e]));
      }
      if (i == ns - 1) break;
      std::fill(local.begin(), local.end(), 0.0);
      std::fill(ldec.begin(), ldec.end(), 0.0);
      // The chunked form in fp64 with the kernel's one rounding, k 2^(b_C - b) to bf16.
      std::fill(chunked.begin(), chunked.end(), 0.0);
      for (int c = c_begin; c < c_end; ++c) {
        for (int d = 0; d < KF; ++d) {
          double b[kC], run = 0;
          for (int r = 0; r < kC; ++r) {
            const int64_t t = static_cast<int64_t>(c) * kC + r;
            if (t < T) run += g[(row * tokens + token0 + t) * KF + d] / std::log(2.0);
            b[r] = run;
          }
          for (int e = 0; e < VF; ++e) chunked[d * VF + e] *= std::exp2(b[kC - 1]);
          for (int r = 0; r < kC; ++r) {
            const int64_t t = static_cast<int64_t>(c) * kC + r;
            if (t >= T) break;
            const int64_t tok = row * tokens + token0 + t;
            const double kh =
                RoundBf16(static_cast<float>(k[tok * KF + d] * std::exp2(b[kC - 1] - b[r])));
            for (int e = 0; e < VF; ++e) chunked[d * VF + e] += kh * v[tok * VF + e];
          }
        }
      }
      for (int64_t t = static_cast<int64_t>(c_begin) * kC;
           t < std::min<int64_t>(T, static_cast<int64_t>(c_end) * kC); ++t) {
        const int64_t tok = row * tokens + token0 + t;
        for (int d = 0; d < KF; ++d) {
          const double a = std::exp(static_cast<double>(g[tok * KF + d]));
          ldec[d] += g[tok * KF + d] / std::log(2.0);
          for (int e = 0; e < VF; ++e) {
            const double kv = static_cast<double>(k[tok * KF + d]) * v[tok * VF + e];
            local[d * VF + e] = a * local[d * VF + e] + kv;
            full[d * VF + e] = a * full[d * VF + e] + kv;
          }
        }
      }
      for (int64_t e = 0; e < static_cast<int64_t>(KF) * VF; ++e) {
        const int64_t at = (slot0 + i) * KF * VF + e;
        if (state_writes[at] != 1) ++bad_writes;
        err_local = std::max(err_local, std::abs(seg_state[at] - local[e]));
        err_chunked = std::max(err_chunked, std::abs(seg_state[at] - chunked[e]));
        sum_chunked += std::abs(seg_state[at] - chunked[e]);
        ++entries;
        max_local = std::max(max_local, std::abs(local[e]));
      }
      for (int d = 0; d < KF; ++d) {
        const int64_t at = (slot0 + i) * KF + d;
        if (decay_writes[at] != 1) ++bad_writes;
        err_dec = std::max(err_dec, std::abs(seg_decay[at] - ldec[d]) / (1.0 + std::abs(ldec[d])));
      }
    }
    // Last segments: pass 1 writes nothing there.
    const int64_t last = slot0 + ns - 1;
    for (int64_t e = 0; e < static_cast<int64_t>(KF) * VF; ++e) {
      if (state_writes[last * KF * VF + e] != 0) ++bad_writes;
    }
  }
  // Bounds. Against the exact recurrence: each term k 2^(b_C - b) is rounded to bf16 (relative
  // error up to 2^-8, ~2^-10 on average) before its product with v; an entry sums n = 64
  // seg_chunks terms of random sign, so its error is ~2^-10 |term| sqrt(n), while the largest
  // entry grows as |term| sqrt(n) times a few: a few 1e-3 of it (measured 1.5-1.9e-3; 4e-3
  // allowed). Against the chunked fp64 form with the same bf16 rounding, what is left is fp32
  // order (mean error 1e-5 of the largest entry allowed) and the rare term that the two round to
  // different bf16 neighbours, their exponents differing in the last bits: one such term moves an
  // entry by up to 2^-8 |k v| <= 2^-8, ~1e-3 of the largest entry (~4): 1.5e-3 allowed.
  // Any wrong index (row, column, slot, token) shows as an error of the order of the entries.
  // Decays: fp32 sums of <= 64 seg_chunks terms, relative 1e-5.
  const double rel_local = err_local / max_local, rel_start = err_start / max_start;
  const double rel_chunked = err_chunked / max_local;
  const double mean_chunked = sum_chunked / entries / max_local;
  const bool ok = bad_writes == 0 && rel_local < 4e-3 && rel_start < 4e-3 && rel_chunked < 1.5e-3 &&
                  mean_chunked < 1e-5 && err_dec < 1e-5;
  std::printf(
      "%-34s K=%d V=%d H=%lld nseg=%d blocks=%lld x %d: local state max err %.2e (rel %.2e of "
      "%.2f; against the bf16-rounded fp64 chunked form: max %.2e, mean %.2e), decay rel err %.2e, "
      "start state max err %.2e (rel %.2e of %.2f), bad writes %d: "
      "%s\n",
      sh.name, KF, VF, static_cast<long long>(H), nseg,
      static_cast<long long>(blocks_pass1 * kKeyBlocks), kSlices, err_local, rel_local, max_local,
      rel_chunked, mean_chunked, err_dec, err_start, rel_start, max_start, bad_writes,
      ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace

int main() {
  using hyb::kernels::cuda::GlaBlocksPerSm;
  using hyb::kernels::cuda::GlaStateLayout;
  std::printf("pass-1 shared memory: V=128 %d B (%d blocks/SM), V=64 %d B (%d blocks/SM)\n",
              GlaStateLayout<128>::kBytes, GlaBlocksPerSm(GlaStateLayout<128>::kBytes),
              GlaStateLayout<64>::kBytes, GlaBlocksPerSm(GlaStateLayout<64>::kBytes));
  const Shape shapes[] = {
      {"fixed, T=677 (10 chunks + 37)", 128, 128, 2, {677, 677}, false, 4, true},
      {"fixed, K=256 V=64, T=300", 256, 64, 1, {300, 300}, false, 2, false},
      {"fixed, K=64 V=256, T=500", 64, 256, 2, {500}, false, 3, true},
      {"fixed, K=V=64, T=1024 (whole chunks)", 64, 64, 3, {1024}, false, 4, false},
      {"packed, lengths 130, 0, 581, 64", 128, 128, 2, {130, 0, 581, 64}, true, 4, true},
      {"packed, K=V=256, lengths 0, 200, 70", 256, 256, 1, {0, 200, 70}, true, 2, true},
  };
  int failed = 0;
  uint32_t seed = 1;
  for (const Shape& s : shapes) failed += Run(s, seed++);
  return failed == 0 ? 0 : 1;
}
