// GPU tests of the split-KV single-query attention kernel (kernels/cuda/attention_decode.cu)
// against an fp64 reference over exactly the visible keys (ctest label `gpu`). Tolerance as in
// flash-attention's tests: the kernel's error against fp64 stays within twice the error of the
// same math run in the inputs' dtype (ATen matmul, fp32 softmax), with a floor for the cases
// where both are exact.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <tuple>
#include <vector>

#include "gpu_test_util.h"
#include "hyb/kernels/attention.h"

#ifdef HYB_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "hyb/kernels/cuda_attention.h"
#endif

namespace hyb {
namespace {

#ifdef HYB_WITH_CUDA

#define HYB_REQUIRE_CUDA_DECODE() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device present"

// Attention of q [B, H, 1, D] over the keys lo..end of k, v [B, Hkv, Cap, D], computed in
// `type` (softmax in fp32, or fp64 for fp64) with the query heads of a group as its rows.
at::Tensor Reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t lo,
                     int64_t end, double scale, at::ScalarType type) {
  const int64_t b = q.size(0), h = q.size(1), d = q.size(3), hkv = k.size(1);
  const int64_t n = end - lo + 1;
  const at::Tensor qg = q.to(type).reshape({b, hkv, h / hkv, d});
  const at::Tensor kk = k.narrow(2, lo, n).to(type), vv = v.narrow(2, lo, n).to(type);
  const at::Tensor scores = at::matmul(qg, kk.transpose(-2, -1)) * scale;  // [B, Hkv, rep, n]
  const auto softmax_type = type == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor probs = at::softmax(scores, -1, softmax_type).to(type);
  return at::matmul(probs, vv).reshape({b, h, 1, d});
}

struct Visible {
  int64_t lo, end;
};

Visible VisibleRange(int64_t end, int64_t window) {
  return {window > 0 ? std::max<int64_t>(0, end - window + 1) : 0, end};
}

at::Tensor Position(int64_t p) {
  return at::full({1}, p, at::TensorOptions().dtype(at::kLong).device(at::kCUDA));
}

// Runs the kernel at every position and window on buffers k, v (any supported strides) and
// checks it against the fp64 reference and the `type` reference's own error.
void CheckPositions(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const std::vector<int64_t>& positions, const char* what) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  const int64_t cap = k.size(2);
  for (const int64_t pos : positions) {
    for (const int64_t window : {0, 37}) {
      const Visible vis = VisibleRange(pos, window);
      PoisonAllocator(q.numel() * 4 * 2048);
      const at::Tensor got =
          kernels::cuda::AttentionDecodeAt(q, k, v, Position(pos), window, scale);
      const at::Tensor want = Reference(q, k, v, vis.lo, vis.end, scale, at::kDouble);
      const at::Tensor same = Reference(q, k, v, vis.lo, vis.end, scale, q.scalar_type());
      const double err = RelErr(got, want), ref = RelErr(same, want);
      SCOPED_TRACE(::testing::Message()
                   << what << " B=" << q.size(0) << " H=" << q.size(1) << " Hkv=" << k.size(1)
                   << " D=" << q.size(3) << " cap=" << cap << " pos=" << pos
                   << " window=" << window << " " << q.scalar_type() << " err=" << err
                   << " ref=" << ref);
      ASSERT_EQ(got.sizes(), q.sizes());
      ASSERT_EQ(got.scalar_type(), q.scalar_type());
      EXPECT_TRUE(at::isfinite(got).all().item<bool>());
      EXPECT_LT(err, std::max(2 * ref, 1e-5));
    }
  }
}

std::vector<int64_t> Positions(int64_t cap) {
  std::vector<int64_t> p = {0, cap / 2, cap - 1};
  std::sort(p.begin(), p.end());
  p.erase(std::unique(p.begin(), p.end()), p.end());
  return p;
}

TEST(CudaAttentionDecodeTest, Bf16WithinTwiceReferenceErrorAcrossShapes) {
  HYB_REQUIRE_CUDA_DECODE();
  torch::manual_seed(21);
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  for (const auto& [h, hkv] :
       std::vector<std::pair<int64_t, int64_t>>{{32, 8}, {16, 16}, {14, 2}}) {
    for (const int64_t d : {64, 128, 256}) {
      for (const int64_t cap : {1, 100, 4096, 65536 + 7}) {
        // The longest buffers at batch 1 and 3 only (memory of the fp64 reference).
        const std::vector<int64_t> batches =
            cap > 4096 ? std::vector<int64_t>{1, 3} : std::vector<int64_t>{1, 3, 32};
        for (const int64_t b : batches) {
          const at::Tensor q = at::randn({b, h, 1, d}, bf16);
          const at::Tensor k = at::randn({b, hkv, cap, d}, bf16);
          const at::Tensor v = at::randn({b, hkv, cap, d}, bf16);
          CheckPositions(q, k, v, Positions(cap), "contiguous");
          if (HasFailure()) return;
        }
      }
    }
  }
}

TEST(CudaAttentionDecodeTest, Fp16AndFp32AndSmallHeadDims) {
  HYB_REQUIRE_CUDA_DECODE();
  torch::manual_seed(22);
  for (const auto type : {at::kHalf, at::kFloat}) {
    const auto opts = at::TensorOptions().device(at::kCUDA).dtype(type);
    for (const int64_t d : {8, 16, 32, 64, 128, 256}) {
      const at::Tensor q = at::randn({3, 8, 1, d}, opts);
      const at::Tensor k = at::randn({3, 2, 1000, d}, opts);
      const at::Tensor v = at::randn({3, 2, 1000, d}, opts);
      CheckPositions(q, k, v, {0, 517, 999}, "dtypes");
    }
  }
  // Large scores (sharp softmax) in bf16.
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const at::Tensor q = at::randn({2, 8, 1, 64}, bf16) * 4;
  const at::Tensor k = at::randn({2, 8, 3000, 64}, bf16) * 4;
  const at::Tensor v = at::randn({2, 8, 3000, 64}, bf16);
  CheckPositions(q, k, v, {0, 1500, 2999}, "sharp");
}

// Narrowed buffers (the cache's first `length` keys, or a window of a longer buffer) and a
// token-major layout ([B, T, Hkv, D] transposed): the kernel reads the strides it is given.
TEST(CudaAttentionDecodeTest, StridedKeyValueViews) {
  HYB_REQUIRE_CUDA_DECODE();
  torch::manual_seed(23);
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  for (const auto& [h, hkv, d] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {32, 8, 64}, {14, 2, 128}, {16, 16, 256}}) {
    const at::Tensor q = at::randn({3, h, 1, d}, bf16);
    const at::Tensor kb = at::randn({3, hkv, 5000, d}, bf16);
    const at::Tensor vb = at::randn({3, hkv, 5000, d}, bf16);
    CheckPositions(q, kb.narrow(2, 0, 3001), vb.narrow(2, 0, 3001), {0, 1234, 3000}, "narrow 0");
    CheckPositions(q, kb.narrow(2, 17, 2000), vb.narrow(2, 17, 2000), {0, 999, 1999},
                   "narrow 17");
    const at::Tensor kt = at::randn({3, 2100, hkv, d}, bf16).transpose(1, 2);
    const at::Tensor vt = at::randn({3, 2100, hkv, d}, bf16).transpose(1, 2);
    CheckPositions(q, kt, vt, {0, 1000, 2099}, "token-major");
    // A separately strided value buffer.
    CheckPositions(q, kb.narrow(2, 0, 2100), vt, {2099}, "mixed");
  }
}

TEST(CudaAttentionDecodeTest, PositionsPastTheBufferAndBeforeTheFirstKey) {
  HYB_REQUIRE_CUDA_DECODE();
  torch::manual_seed(24);
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const at::Tensor q = at::randn({2, 8, 1, 64}, bf16);
  const at::Tensor k = at::randn({2, 2, 700, 64}, bf16);
  const at::Tensor v = at::randn({2, 2, 700, 64}, bf16);
  const at::Tensor last = kernels::cuda::AttentionDecodeAt(q, k, v, Position(699), 0, 0.125);
  EXPECT_TRUE(at::equal(kernels::cuda::AttentionDecodeAt(q, k, v, Position(5000), 0, 0.125), last));
  EXPECT_TRUE(at::equal(kernels::cuda::AttentionDecode(q, k, v, 0, 0.125), last));
  // Deterministic: the same bits twice.
  EXPECT_TRUE(at::equal(kernels::cuda::AttentionDecodeAt(q, k, v, Position(699), 0, 0.125), last));
  PoisonAllocator(1 << 22);
  const at::Tensor none = kernels::cuda::AttentionDecodeAt(q, k, v, Position(-1), 0, 0.125);
  EXPECT_TRUE(at::equal(none, at::zeros_like(none)));
}

// The dispatch: SoftmaxAttention's single-query branch runs the kernel on CUDA for key_end and
// for the plain full-length case, the math path under force_math, and an unsupported head size
// falls back to a key mask built on the device.
TEST(CudaAttentionDecodeTest, SoftmaxAttentionDispatchesSingleQueries) {
  HYB_REQUIRE_CUDA_DECODE();
  at::NoGradGuard no_grad;
  torch::manual_seed(25);
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const at::Tensor q = at::randn({2, 8, 1, 64}, bf16);
  const at::Tensor k = at::randn({2, 2, 900, 64}, bf16);
  const at::Tensor v = at::randn({2, 2, 900, 64}, bf16);
  for (const int64_t window : {0, 37}) {
    kernels::AttentionOptions o;
    o.sliding_window = window;
    o.scale = 0.125;
    o.key_end = Position(600);
    const at::Tensor direct = kernels::cuda::AttentionDecodeAt(q, k, v, o.key_end, window, 0.125);
    EXPECT_TRUE(at::equal(kernels::SoftmaxAttention(q, k, v, o), direct)) << window;
    o.force_math = true;
    const at::Tensor math = kernels::SoftmaxAttention(q, k, v, o);
    const Visible vis = VisibleRange(600, window);
    const at::Tensor want = Reference(q, k, v, vis.lo, vis.end, 0.125, at::kDouble);
    EXPECT_LT(RelErr(direct, want), std::max(2 * RelErr(math, want), 1e-5)) << window;
    // Plain: the first 601 keys, the query at position 600.
    kernels::AttentionOptions plain;
    plain.sliding_window = window;
    plain.scale = 0.125;
    plain.q_offset = 600;
    const at::Tensor kn = k.narrow(2, 0, 601), vn = v.narrow(2, 0, 601);
    const at::Tensor got_plain = kernels::SoftmaxAttention(q, kn, vn, plain);
    EXPECT_TRUE(at::equal(got_plain, kernels::cuda::AttentionDecode(q, kn, vn, window, 0.125)))
        << window;
    EXPECT_LT(RelErr(got_plain, want), std::max(2 * RelErr(math, want), 1e-5)) << window;
  }
  // D = 48: not a kernel size; the mask path gives the same attention.
  const at::Tensor q48 = at::randn({1, 4, 1, 48}, bf16);
  const at::Tensor k48 = at::randn({1, 2, 300, 48}, bf16);
  const at::Tensor v48 = at::randn({1, 2, 300, 48}, bf16);
  EXPECT_FALSE(kernels::cuda::AttentionDecodeSupported(q48, k48, v48));
  kernels::AttentionOptions o48;
  o48.scale = 0.2;
  o48.sliding_window = 37;
  o48.key_end = Position(200);
  const at::Tensor got48 = kernels::SoftmaxAttention(q48, k48, v48, o48);
  const at::Tensor want48 = Reference(q48, k48, v48, 164, 200, 0.2, at::kDouble);
  EXPECT_LT(RelErr(got48, want48), 1e-2);
}

// A captured CUDA graph replays the same launch while the position on the device moves: every
// replay attends over the keys up to the new position (and inside the window).
TEST(CudaAttentionDecodeTest, CapturedGraphFollowsTheDevicePosition) {
  HYB_REQUIRE_CUDA_DECODE();
  at::NoGradGuard no_grad;
  torch::manual_seed(26);
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t cap = 4096 + 3;
  const at::Tensor q = at::randn({3, 32, 1, 64}, bf16);
  const at::Tensor k = at::randn({3, 8, cap, 64}, bf16);
  const at::Tensor v = at::randn({3, 8, cap, 64}, bf16);
  for (const int64_t window : {0, 37}) {
    at::Tensor pos = Position(10);
    kernels::AttentionOptions o;
    o.sliding_window = window;
    o.scale = 0.125;
    o.key_end = pos;
    const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
    c10::cuda::getCurrentCUDAStream().synchronize();
    at::cuda::CUDAGraph graph;
    at::Tensor out;  // in the graph's memory pool: released before the graph
    {
      const c10::cuda::CUDAStreamGuard guard(side);
      out = kernels::SoftmaxAttention(q, k, v, o);  // warm-up outside the capture
      side.synchronize();
      graph.capture_begin();
      out = kernels::SoftmaxAttention(q, k, v, o);
      graph.capture_end();
    }
    for (const int64_t p : {int64_t{0}, int64_t{10}, int64_t{2000}, cap - 1, int64_t{777}}) {
      pos.fill_(p);
      graph.replay();
      torch::cuda::synchronize();
      const Visible vis = VisibleRange(p, window);
      const at::Tensor want = Reference(q, k, v, vis.lo, vis.end, 0.125, at::kDouble);
      const at::Tensor same = Reference(q, k, v, vis.lo, vis.end, 0.125, at::kBFloat16);
      EXPECT_LT(RelErr(out, want), std::max(2 * RelErr(same, want), 1e-5))
          << "position " << p << " window " << window;
      EXPECT_TRUE(at::equal(out, kernels::cuda::AttentionDecodeAt(q, k, v, pos, window, 0.125)))
          << "position " << p << " window " << window;
    }
  }
}

#else  // HYB_WITH_CUDA

TEST(CudaAttentionDecodeTest, NeedsTheCudaBuild) { GTEST_SKIP() << "built without HYB_CUDA"; }

#endif  // HYB_WITH_CUDA

}  // namespace
}  // namespace hyb
