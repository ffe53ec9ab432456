// Fused logits scoring: one block per row (grid-stride over rows), a single pass over the row with
// 16-byte vector loads and an online maximum / sum of exponentials in fp32; the threads' states
// merge through warp shuffles and shared memory. See logits_score_launch.h for the numerics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "logits_score_launch.h"

namespace hyb::kernels::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kMaxThreads = 512;
// Blocks at most per launch (rows beyond loop in the kernel).
constexpr int64_t kMaxBlocks = INT_MAX;

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }

// 2^x with results below 2^-126 flushed to 0 (one MUFU instruction; exp2f adds a denormal
// fix-up around it). Terms that small do not change an fp32 sum that holds a 1. 2^-inf = 0.
__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// The N consecutive elements at p, which is aligned to N * sizeof(T) bytes, as floats (one
// 16-, 8- or 4-byte load).
template <int N, typename T>
__device__ __forceinline__ void LoadFloats(const T* p, float (&out)[N]) {
  constexpr int kBytes = N * static_cast<int>(sizeof(T));
  if constexpr (kBytes == 16) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = ToFloat(e[i]);
  } else if constexpr (kBytes == 8) {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = ToFloat(e[i]);
  } else {
    static_assert(N == 1, "scalar loads only below 8 bytes");
    out[0] = ToFloat(p[0]);
  }
}

// Online log-sum-exp in base 2: m2 = max(x) * log2(e) (rounded), s = sum 2^(x log2(e) - m2).
// {-inf, 0} is the empty state. logsumexp = ln 2 * (m2 + log2 s).
struct Lse {
  float m2;
  float s;
};

__device__ __forceinline__ Lse EmptyLse() { return {-INFINITY, 0.f}; }

// 2^(m_old - m_new), 0 for an empty old state (which would give -inf - -inf = NaN).
__device__ __forceinline__ float Rescale(float m_old, float m_new) {
  return m_old == -INFINITY ? 0.f : Exp2(m_old - m_new);
}

template <int N>
__device__ __forceinline__ float MaxOf(const float (&x)[N]) {
  float m = x[0];
#pragma unroll
  for (int i = 1; i < N; ++i) m = fmaxf(m, x[i]);
  return m;
}

// Raises st.m2 to cover x (rescaling the sums in `scaled` alike); false while everything seen is
// -inf (then there is nothing to add).
__device__ __forceinline__ bool RaiseMax(Lse& st, float x_max, float* also_scaled) {
  const float m2 = x_max * kLog2e;
  if (m2 > st.m2) {
    const float f = Rescale(st.m2, m2);
    st.s *= f;
    if (also_scaled != nullptr) *also_scaled *= f;
    st.m2 = m2;
  }
  return st.m2 != -INFINITY;
}

template <int N>
__device__ __forceinline__ void Accumulate(Lse& st, const float (&x)[N]) {
  if (!RaiseMax(st, MaxOf(x), nullptr)) return;
#pragma unroll
  for (int i = 0; i < N; ++i) st.s += Exp2(fmaf(x[i], kLog2e, -st.m2));
}

__device__ __forceinline__ Lse Merge(const Lse& a, const Lse& b) {
  const float m = fmaxf(a.m2, b.m2);
  return {m, a.s * Rescale(a.m2, m) + b.s * Rescale(b.m2, m)};
}

__device__ __forceinline__ Lse ShflXor(const Lse& v, int offset) {
  return {__shfl_xor_sync(0xffffffffu, v.m2, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)};
}

// KL(p || q) with p = softmax(t), q = softmax(l): the two log-sum-exps and
// a = sum e_j ((t_j - l_j) - c), e_j = 2^(t_j log2(e) - t.m2), scaled with t.s.
struct KlState {
  Lse t;
  Lse l;
  float a;
};

__device__ __forceinline__ KlState EmptyKl() { return {EmptyLse(), EmptyLse(), 0.f}; }

template <int N>
__device__ __forceinline__ void Accumulate(KlState& st, const float (&t)[N], const float (&l)[N],
                                           float c) {
  if (RaiseMax(st.t, MaxOf(t), &st.a)) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const float e = Exp2(fmaf(t[i], kLog2e, -st.t.m2));
      st.t.s += e;
      // e = 0 (a token the teacher rules out) counts 0, also where t - l is not finite.
      st.a += e > 0.f ? e * ((t[i] - l[i]) - c) : 0.f;
    }
  }
  if (RaiseMax(st.l, MaxOf(l), nullptr)) {
#pragma unroll
    for (int i = 0; i < N; ++i) st.l.s += Exp2(fmaf(l[i], kLog2e, -st.l.m2));
  }
}

__device__ __forceinline__ KlState Merge(const KlState& a, const KlState& b) {
  const float mt = fmaxf(a.t.m2, b.t.m2);
  const float fa = Rescale(a.t.m2, mt), fb = Rescale(b.t.m2, mt);
  KlState r;
  r.t = {mt, a.t.s * fa + b.t.s * fb};
  r.a = a.a * fa + b.a * fb;
  r.l = Merge(a.l, b.l);
  return r;
}

__device__ __forceinline__ KlState ShflXor(const KlState& v, int offset) {
  return {ShflXor(v.t, offset), ShflXor(v.l, offset), __shfl_xor_sync(0xffffffffu, v.a, offset)};
}

// The merge of every thread's state, valid in thread 0. blockDim.x is a multiple of 32 (at most
// 1024); `smem` holds 32 states. Ends with a barrier, so `smem` may be reused right after.
template <typename S>
__device__ __forceinline__ S BlockReduce(S v, S* smem, S empty) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = Merge(v, ShflXor(v, offset));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / 32) ? smem[lane] : empty;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) v = Merge(v, ShflXor(v, offset));
  }
  __syncthreads();
  return v;
}

// Elements before the first address of `p`'s row aligned to 16 bytes (at most cols).
template <typename T>
__device__ __forceinline__ int64_t HeadElements(const T* p, int64_t cols) {
  const int64_t head =
      static_cast<int64_t>((16 - (reinterpret_cast<uintptr_t>(p) & 15)) & 15) / sizeof(T);
  return head < cols ? head : cols;
}

// Calls fn(float[k]) over the row p[0, cols) of this block: single elements before the first
// 16-byte boundary and after the last whole vector, N-element vectors (16 bytes) in between,
// two vectors per thread in flight.
template <int N, typename T, typename Fn>
__device__ __forceinline__ void SweepRow(const T* p, int64_t cols, Fn&& fn) {
  const int64_t head = HeadElements(p, cols);
  const int64_t nvec = (cols - head) / N;
  const int64_t step = blockDim.x;
  for (int64_t i = threadIdx.x; i < head; i += step) {
    float x[1];
    LoadFloats<1>(p + i, x);
    fn(x);
  }
  const T* body = p + head;
  int64_t v = threadIdx.x;
  for (; v + step < nvec; v += 2 * step) {
    float x0[N], x1[N];
    LoadFloats<N>(body + v * N, x0);
    LoadFloats<N>(body + (v + step) * N, x1);
    fn(x0);
    fn(x1);
  }
  if (v < nvec) {
    float x0[N];
    LoadFloats<N>(body + v * N, x0);
    fn(x0);
  }
  for (int64_t i = head + nvec * N + threadIdx.x; i < cols; i += step) {
    float x[1];
    LoadFloats<1>(p + i, x);
    fn(x);
  }
}

// The same over two rows a[0, cols) and b[0, cols) element by element: fn(float[k], float[k]).
// N elements are 16 bytes of the wider type; vectors when b is aligned where a is, else single
// elements throughout.
template <int N, typename TA, typename TB, typename Fn>
__device__ __forceinline__ void SweepRows(const TA* a, const TB* b, int64_t cols, Fn&& fn) {
  int64_t head = HeadElements(a, cols);
  if (reinterpret_cast<uintptr_t>(b + head) % (N * sizeof(TB)) != 0) head = cols;
  const int64_t nvec = (cols - head) / N;
  const int64_t step = blockDim.x;
  for (int64_t i = threadIdx.x; i < head; i += step) {
    float x[1], y[1];
    LoadFloats<1>(a + i, x);
    LoadFloats<1>(b + i, y);
    fn(x, y);
  }
  const TA* a_body = a + head;
  const TB* b_body = b + head;
  int64_t v = threadIdx.x;
  for (; v + step < nvec; v += 2 * step) {
    float x0[N], y0[N], x1[N], y1[N];
    LoadFloats<N>(a_body + v * N, x0);
    LoadFloats<N>(b_body + v * N, y0);
    LoadFloats<N>(a_body + (v + step) * N, x1);
    LoadFloats<N>(b_body + (v + step) * N, y1);
    fn(x0, y0);
    fn(x1, y1);
  }
  if (v < nvec) {
    float x0[N], y0[N];
    LoadFloats<N>(a_body + v * N, x0);
    LoadFloats<N>(b_body + v * N, y0);
    fn(x0, y0);
  }
  for (int64_t i = head + nvec * N + threadIdx.x; i < cols; i += step) {
    float x[1], y[1];
    LoadFloats<1>(a + i, x);
    LoadFloats<1>(b + i, y);
    fn(x, y);
  }
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
    TokenLogProbsKernel(const T* __restrict__ logits, int64_t row_stride,
                        const int64_t* __restrict__ targets, float* __restrict__ out, int64_t rows,
                        int64_t cols) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  __shared__ Lse smem[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* x = logits + row * row_stride;
    // The target's logit, loaded before the sweep so that its latency hides behind it.
    float target_logit = NAN;
    if (threadIdx.x == 0) {
      const int64_t t = targets[row];
      if (t >= 0 && t < cols) target_logit = ToFloat(x[t]);
    }
    Lse st = EmptyLse();
    SweepRow<kVec>(x, cols, [&](const auto& v) { Accumulate(st, v); });
    st = BlockReduce(st, smem, EmptyLse());
    if (threadIdx.x == 0) out[row] = target_logit - (st.m2 + log2f(st.s)) * kLn2;
  }
}

template <typename TT, typename TL>
__global__ void __launch_bounds__(kMaxThreads)
    RowKlKernel(const TT* __restrict__ teacher, int64_t teacher_row_stride,
                const TL* __restrict__ logits, int64_t logits_row_stride, float* __restrict__ out,
                int64_t rows, int64_t cols) {
  constexpr int kWidest = sizeof(TT) > sizeof(TL) ? sizeof(TT) : sizeof(TL);
  constexpr int kVec = 16 / kWidest;
  __shared__ KlState smem[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const TT* t = teacher + row * teacher_row_stride;
    const TL* l = logits + row * logits_row_stride;
    // The row's first difference: the offset between the two models' logits, taken out of the
    // sum so that it adds no rounding error there.
    float c = ToFloat(t[0]) - ToFloat(l[0]);
    if (!isfinite(c)) c = 0.f;
    KlState st = EmptyKl();
    SweepRows<kVec>(t, l, cols, [&](const auto& x, const auto& y) { Accumulate(st, x, y, c); });
    st = BlockReduce(st, smem, EmptyKl());
    if (threadIdx.x == 0) {
      const float lse_t = st.t.m2 + log2f(st.t.s), lse_l = st.l.m2 + log2f(st.l.s);  // base 2
      out[row] = st.a / st.t.s + c - (lse_t - lse_l) * kLn2;
    }
  }
}

unsigned Blocks(int64_t rows) { return static_cast<unsigned>(rows < kMaxBlocks ? rows : kMaxBlocks); }

template <typename T>
cudaError_t LaunchLogProbs(const TokenLogProbsParams& p, cudaStream_t stream) {
  TokenLogProbsKernel<T><<<Blocks(p.rows), LogitsScoreBlockSize(p.cols), 0, stream>>>(
      static_cast<const T*>(p.logits), p.row_stride, p.targets, p.out, p.rows, p.cols);
  return cudaGetLastError();
}

template <typename TT, typename TL>
cudaError_t LaunchKl(const RowKlParams& p, cudaStream_t stream) {
  RowKlKernel<TT, TL><<<Blocks(p.rows), LogitsScoreBlockSize(p.cols), 0, stream>>>(
      static_cast<const TT*>(p.teacher), p.teacher_row_stride, static_cast<const TL*>(p.logits),
      p.logits_row_stride, p.out, p.rows, p.cols);
  return cudaGetLastError();
}

template <typename TT>
cudaError_t LaunchKlForTeacher(const RowKlParams& p, cudaStream_t stream) {
  switch (p.logits_type) {
    case LogitsType::kF32: return LaunchKl<TT, float>(p, stream);
    case LogitsType::kBF16: return LaunchKl<TT, __nv_bfloat16>(p, stream);
    case LogitsType::kF16: return LaunchKl<TT, __half>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

int LogitsScoreBlockSize(int64_t cols) {
  int threads = 32;
  while (threads < kMaxThreads && threads * int64_t{32} < cols) threads *= 2;
  return threads;
}

cudaError_t LaunchTokenLogProbs(const TokenLogProbsParams& params, cudaStream_t stream) {
  if (params.rows == 0) return cudaSuccess;
  if (params.cols < 1 || params.rows < 0) return cudaErrorInvalidValue;
  switch (params.type) {
    case LogitsType::kF32: return LaunchLogProbs<float>(params, stream);
    case LogitsType::kBF16: return LaunchLogProbs<__nv_bfloat16>(params, stream);
    case LogitsType::kF16: return LaunchLogProbs<__half>(params, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchRowKl(const RowKlParams& params, cudaStream_t stream) {
  if (params.rows == 0) return cudaSuccess;
  if (params.cols < 1 || params.rows < 0) return cudaErrorInvalidValue;
  switch (params.teacher_type) {
    case LogitsType::kF32: return LaunchKlForTeacher<float>(params, stream);
    case LogitsType::kBF16: return LaunchKlForTeacher<__nv_bfloat16>(params, stream);
    case LogitsType::kF16: return LaunchKlForTeacher<__half>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace hyb::kernels::cuda
