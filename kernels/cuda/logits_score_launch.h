// Torch-free launchers of the fused logits-scoring kernels (logits_score.cu): per row of [N, V]
// logits, log p(target) and KL(teacher || student), each reading its row(s) once.
//
// Numerics: fp32 throughout. One block per row keeps, per thread, an online maximum m and sum of
// exponentials S (in base 2: m2 = max(x) * log2(e), S = sum 2^(x log2(e) - m2), so that
// logsumexp = ln 2 * (m2 + log2 S) holds exactly for the rounded m2), merged across threads with
// rescaling. For KL the teacher's sum also carries A = sum e_j * ((t_j - l_j) - c) with
// e_j = 2^(t_j log2(e) - m2_t) and c = t_0 - l_0 (the row's first difference, 0 if not finite,
// which removes the offset the two models' logits may have), so that
// KL = A / S_t + c - (lse_t - lse_l); a term with e_j = 0 counts 0.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hyb::kernels::cuda {

enum class LogitsType { kF32, kBF16, kF16 };

// Threads per block for rows of `cols` elements: a power of two in [32, 512], about four 16-byte
// vectors per thread on short rows.
int LogitsScoreBlockSize(int64_t cols);

struct TokenLogProbsParams {
  const void* logits = nullptr;  // [rows, cols], unit column stride, 2-byte or 4-byte aligned
  int64_t row_stride = 0;        // elements between row starts (any value)
  LogitsType type = LogitsType::kBF16;
  const int64_t* targets = nullptr;  // [rows], contiguous, on the device
  float* out = nullptr;              // [rows], contiguous: NaN where a target is outside [0, cols)
  int64_t rows = 0;
  int64_t cols = 0;  // >= 1
};

// Enqueues the kernel on `stream`; returns the launch error (cudaSuccess on success,
// cudaErrorInvalidValue for cols < 1 with rows > 0).
cudaError_t LaunchTokenLogProbs(const TokenLogProbsParams& params, cudaStream_t stream);

struct RowKlParams {
  const void* teacher = nullptr;  // [rows, cols], unit column stride
  int64_t teacher_row_stride = 0;
  LogitsType teacher_type = LogitsType::kBF16;
  const void* logits = nullptr;  // [rows, cols], unit column stride
  int64_t logits_row_stride = 0;
  LogitsType logits_type = LogitsType::kBF16;
  float* out = nullptr;  // [rows], contiguous
  int64_t rows = 0;
  int64_t cols = 0;  // >= 1
};

// Enqueues the kernel on `stream`; returns the launch error as above.
cudaError_t LaunchRowKl(const RowKlParams& params, cudaStream_t stream);

}  // namespace hyb::kernels::cuda
