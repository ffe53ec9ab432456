// Torch-free launchers of the RMSNorm kernels (rms_norm.cu: one block per row, forward only, any
// row length; rms_norm_gated.cu: vectorised rows, optional silu gate, forward and backward), and
// the tile and row-layout math they share with the host (tests/kernels/norm_test.cc checks that
// math on the CPU: define HYB_RMS_NORM_PLAN_ONLY before including this header to get only that
// part, without the CUDA runtime).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define HYB_RMS_NORM_HD __host__ __device__
#else
#define HYB_RMS_NORM_HD
#endif

namespace hyb::kernels::cuda {

enum class ElemType { kF32, kBF16, kF16 };

// Elements one thread keeps in registers per row at most (of each of x, weight, d_y...).
inline constexpr int kRmsNormMaxThreadElems = 32;
// Rows of at most this many 16-byte vectors share warps (2 vectors per thread at most); longer
// rows take a block each.
inline constexpr int64_t kRmsNormMaxWarpRowVecs = 64;
// Threads per block when rows share warps, and at most when a row takes a block (the backward
// keeps about 4 * kRmsNormMaxThreadElems floats per thread in registers).
inline constexpr int kRmsNormWarpModeBlock = 256;
inline constexpr int kRmsNormMaxBlock = 256;

// How the vectorised kernels cut rows of `cols` elements: a row is read as cols / vec 16-byte
// vectors; vector j of a row belongs to thread j % threads_per_row of the row's thread group, in
// register slot j / threads_per_row (< vecs_per_thread).
struct RmsNormTile {
  int vec = 0;              // elements per 16-byte vector: 4 (fp32) or 8 (bf16, fp16)
  int threads_per_row = 0;  // a power of two; <= 32: a warp holds 32 / threads_per_row rows;
                            // else == block_threads (64..256): one row per block
  int vecs_per_thread = 0;  // 1, 2, 4 or 8, at most kRmsNormMaxThreadElems / vec
  int block_threads = 0;
  int rows_per_block = 0;   // block_threads / threads_per_row
};

inline int64_t RmsNormPow2Ceil(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

// The tile for rows of `cols` elements of `elem_bytes` (4 or 2) bytes. False when the vectorised
// kernels do not take such rows: cols not a multiple of the 16-byte vector, or more than
// kRmsNormMaxBlock * kRmsNormMaxThreadElems (8192) elements.
inline bool PlanRmsNormTile(int64_t cols, int elem_bytes, RmsNormTile* tile) {
  if (elem_bytes != 2 && elem_bytes != 4) return false;
  const int vec = 16 / elem_bytes;
  if (cols <= 0 || cols % vec != 0) return false;
  const int64_t nvec = cols / vec;
  const int max_vecs = kRmsNormMaxThreadElems / vec;
  RmsNormTile t;
  t.vec = vec;
  if (nvec <= kRmsNormMaxWarpRowVecs) {
    t.threads_per_row = static_cast<int>(RmsNormPow2Ceil(nvec < 32 ? nvec : 32));
    t.block_threads = kRmsNormWarpModeBlock;
  } else {
    int64_t threads = RmsNormPow2Ceil((nvec + 1) / 2);  // about 2 vectors per thread
    if (threads > kRmsNormMaxBlock) threads = kRmsNormMaxBlock;
    t.threads_per_row = static_cast<int>(threads);
    t.block_threads = t.threads_per_row;
  }
  const int64_t per_thread = RmsNormPow2Ceil((nvec + t.threads_per_row - 1) / t.threads_per_row);
  if (per_thread > max_vecs) return false;
  t.vecs_per_thread = static_cast<int>(per_thread);
  t.rows_per_block = t.block_threads / t.threads_per_row;
  *tile = t;
  return true;
}

// Resident threads per multiprocessor the launches aim at: the forward keeps few registers (at
// most about 120) and takes the full 2048; the backward about twice as many, and the fewer
// blocks also mean fewer partial weight-gradient rows to write and sum.
inline constexpr int kRmsNormForwardThreadsPerSm = 2048;
inline constexpr int kRmsNormBackwardThreadsPerSm = 1024;

// Blocks of a launch over `rows` rows: one row group each, up to one wave of
// `threads_per_sm` threads on each of `num_sms` multiprocessors; the blocks then stride over the
// rows. The backward writes one partial weight gradient per block, so this also sizes its
// workspace. At least 1.
inline int64_t RmsNormGridBlocks(const RmsNormTile& tile, int64_t rows, int num_sms,
                                 int threads_per_sm) {
  const int64_t needed = (rows + tile.rows_per_block - 1) / tile.rows_per_block;
  int64_t per_sm = threads_per_sm / tile.block_threads;
  if (per_sm < 1) per_sm = 1;
  const int64_t wave = (num_sms > 0 ? num_sms : 1) * per_sm;
  const int64_t blocks = needed < wave ? needed : wave;
  return blocks > 0 ? blocks : 1;
}

// Where the rows of an input live: with row = (i0 * sizes[1] + i1) * sizes[2] + i2, the row
// starts at element i0 * strides[0] + i1 * strides[1] + i2 * strides[2]; its elements are
// contiguous. A contiguous [rows, cols] input is {1, 1, rows} / {0, 0, cols}.
struct RmsNormRows {
  int64_t sizes[3] = {1, 1, 1};
  int64_t strides[3] = {0, 0, 0};
};

// The rows of a tensor with `ndim` >= 1 dims whose last dim has stride 1: its leading dims with
// size-1 dims dropped and neighbours that step like one dim merged. False when more than three
// remain (e.g. a permutation of four dims), or the last dim's stride is not 1 (with size > 1).
inline bool CollapseRmsNormRows(const int64_t* sizes, const int64_t* strides, int ndim,
                                RmsNormRows* rows) {
  if (ndim < 1) return false;
  if (sizes[ndim - 1] > 1 && strides[ndim - 1] != 1) return false;
  int64_t dim_sizes[3], dim_strides[3];
  int n = 0;
  for (int d = 0; d < ndim - 1; ++d) {
    if (sizes[d] == 1) continue;
    if (n > 0 && dim_strides[n - 1] == strides[d] * sizes[d]) {
      dim_sizes[n - 1] *= sizes[d];
      dim_strides[n - 1] = strides[d];
      continue;
    }
    if (n == 3) return false;
    dim_sizes[n] = sizes[d];
    dim_strides[n] = strides[d];
    ++n;
  }
  RmsNormRows r;
  for (int i = 0; i < n; ++i) {
    r.sizes[3 - n + i] = dim_sizes[i];
    r.strides[3 - n + i] = dim_strides[i];
  }
  *rows = r;
  return true;
}

// Element offset of row `row` (see RmsNormRows).
HYB_RMS_NORM_HD inline int64_t RmsNormRowOffset(const RmsNormRows& r, int64_t row) {
  if (r.sizes[0] == 1 && r.sizes[1] == 1) return row * r.strides[2];
  if (row <= 0xffffffffLL && r.sizes[1] <= 0xffffffffLL && r.sizes[2] <= 0xffffffffLL) {
    // 32-bit division: far cheaper on the device than the 64-bit one.
    uint32_t rest = static_cast<uint32_t>(row);
    const uint32_t s2 = static_cast<uint32_t>(r.sizes[2]), s1 = static_cast<uint32_t>(r.sizes[1]);
    const uint32_t j2 = rest % s2;
    rest /= s2;
    const uint32_t j1 = rest % s1;
    const uint32_t j0 = rest / s1;
    return j0 * r.strides[0] + j1 * r.strides[1] + j2 * r.strides[2];
  }
  const int64_t i2 = row % r.sizes[2];
  row /= r.sizes[2];
  const int64_t i1 = row % r.sizes[1];
  const int64_t i0 = row / r.sizes[1];
  return i0 * r.strides[0] + i1 * r.strides[1] + i2 * r.strides[2];
}

}  // namespace hyb::kernels::cuda

#if !defined(HYB_RMS_NORM_PLAN_ONLY)
#include <cuda_runtime.h>

namespace hyb::kernels::cuda {

// Plain RMSNorm forward, one block per row of any length (rms_norm.cu).
struct RmsNormParams {
  const void* x = nullptr;       // [rows, cols], row-major, contiguous
  const void* weight = nullptr;  // [cols]
  void* y = nullptr;             // [rows, cols]
  int64_t rows = 0;
  int64_t cols = 0;
  float eps = 1e-6f;
  ElemType type = ElemType::kF32;  // of x, weight and y alike
};

// Enqueues the kernel on `stream`; returns the launch error (cudaSuccess on success).
cudaError_t LaunchRmsNorm(const RmsNormParams& params, cudaStream_t stream);

// Threads per block used for a row of `cols` elements (host-testable tile math).
int RmsNormBlockSize(int64_t cols);

// Vectorised RMSNorm with an optional silu gate (rms_norm_gated.cu), all tensors of one type:
//   n = x * rsqrt(mean(x^2) + eps)          (fp32, then rounded to the type)
//   y = weight * n                          (rounded)
//   y = y * silu(gate)   when gated         (silu rounded, then the product rounded)
// the roundings of the LibTorch reference (kernels::RmsNormReference times at::silu). Pointers
// 16-byte aligned; x's rows may be strided (x_rows, strides multiples of the vector), every
// other tensor is contiguous [rows, cols].
struct RmsNormGatedParams {
  const void* x = nullptr;
  RmsNormRows x_rows;
  const void* weight = nullptr;  // [cols]
  const void* gate = nullptr;    // [rows, cols], or nullptr: no gate (plain RMSNorm)
  void* y = nullptr;             // [rows, cols]
  int64_t rows = 0;
  int64_t cols = 0;
  float eps = 1e-6f;
  ElemType type = ElemType::kF32;
  RmsNormTile tile;    // from PlanRmsNormTile(cols, bytes of type)
  int64_t blocks = 0;  // from RmsNormGridBlocks (the backward's: with its threads per SM)
};

// Enqueues the forward on `stream`; returns the launch error.
cudaError_t LaunchRmsNormGated(const RmsNormGatedParams& params, cudaStream_t stream);

// The backward of the same function, with fp32 arithmetic through the roundings (their
// derivative taken as 1): with s = silu(gate) (1 without a gate), dn = d_y * s * weight,
//   d_x      = rsqrt(mean(x^2) + eps) * (dn - n * mean(dn * n))
//   d_gate   = d_y * weight * n * silu'(gate)
//   d_weight = sum over rows of d_y * s * n
// Each of `blocks` blocks sums its rows' d_weight into one fp32 row of d_weight_partial, then a
// second kernel sums those rows in a fixed order into d_weight (no atomics: deterministic).
struct RmsNormGatedBackwardParams {
  RmsNormGatedParams forward;  // its y is unused
  const void* d_y = nullptr;         // [rows, cols]
  void* d_x = nullptr;               // [rows, cols]
  void* d_gate = nullptr;            // [rows, cols]; nullptr when there is no gate
  float* d_weight_partial = nullptr;  // [forward.blocks, cols] workspace
  void* d_weight = nullptr;          // [cols]
};

// Enqueues both kernels of the backward on `stream`; returns the first launch error.
cudaError_t LaunchRmsNormGatedBackward(const RmsNormGatedBackwardParams& params,
                                       cudaStream_t stream);

}  // namespace hyb::kernels::cuda
#endif  // !HYB_RMS_NORM_PLAN_ONLY
