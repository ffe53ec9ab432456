// CPU tests of the RMSNorm family: the gated norm against its definition (values and gradients,
// fp64), the closed-form backward the CUDA kernel implements against autograd, the CPU numbers of
// RmsNorm, and the tile and row-layout math the CUDA launchers share with the host.
#include "hyb/kernels/norm.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <utility>
#include <vector>

#define HYB_RMS_NORM_PLAN_ONLY
#include "../../kernels/cuda/rms_norm_launch.h"

namespace hyb::kernels {
namespace {

double MaxRel(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs().max() / (b.abs().max() + 1e-300)).item<double>();
}

// The mixer's case: x a [B, T, H, D] transpose of [B, H, T, D], gate the [B, T, H * D]
// projection.
struct GatedInputs {
  at::Tensor x, weight, gate;
};

GatedInputs MakeGated(int64_t b, int64_t h, int64_t t, int64_t d, at::ScalarType type) {
  const auto o = at::TensorOptions().dtype(type);
  GatedInputs in;
  in.x = (2 * at::randn({b, h, t, d}, o)).transpose(1, 2).detach().requires_grad_(true);
  in.weight = (1 + 0.3 * at::randn({d}, o)).detach().requires_grad_(true);
  in.gate = (2 * at::randn({b, t, h * d}, o)).detach().requires_grad_(true);
  return in;
}

TEST(RmsNormGatedTest, EqualsRmsNormTimesSiluInDoubleWithGradients) {
  torch::manual_seed(3);
  const GatedInputs in = MakeGated(2, 3, 5, 16, at::kDouble);
  const at::Tensor out = RmsNormGated(in.x, in.weight, in.gate, 1e-6);
  const at::Tensor want =
      RmsNorm(in.x, in.weight, 1e-6) * at::silu(in.gate).view({2, 5, 3, 16});
  ASSERT_EQ(out.sizes(), in.x.sizes());
  EXPECT_EQ(out.scalar_type(), at::kDouble);
  EXPECT_LE(MaxRel(out, want), 1e-15);
  const at::Tensor d_out = at::randn(out.sizes(), out.options());
  const auto got = torch::autograd::grad({out}, {in.x, in.weight, in.gate}, {d_out});
  const auto ref = torch::autograd::grad({want}, {in.x, in.weight, in.gate}, {d_out});
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[2].sizes(), in.gate.sizes());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_LE(MaxRel(got[i], ref[i]), 1e-14) << i;
}

// RmsNormGated's formula all in x's dtype (RmsNormReference computes in fp32 even for fp64
// inputs): the exact oracle in fp64.
at::Tensor ExactRmsNormGated(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& gate,
                             double eps) {
  const at::Tensor y = weight * (x * at::rsqrt(x.pow(2).mean(-1, true) + eps));
  return gate.defined() ? y * at::silu(gate.reshape(x.sizes())) : y;
}

// The formulas of rms_norm_launch.h (what the CUDA backward computes), in fp64 ATen ops, against
// autograd through the exact formula.
TEST(RmsNormGatedTest, ClosedFormBackwardMatchesAutograd) {
  torch::manual_seed(4);
  const double eps = 1e-5;
  for (const bool gated : {true, false}) {
    const GatedInputs in = MakeGated(2, 4, 7, 32, at::kDouble);
    const at::Tensor gate = in.gate.view(in.x.sizes());
    const at::Tensor out =
        ExactRmsNormGated(in.x, in.weight, gated ? in.gate : at::Tensor(), eps);
    const at::Tensor d_y = at::randn(out.sizes(), out.options());
    const auto ref = torch::autograd::grad({out}, {in.x, in.weight, in.gate}, {d_y},
                                           /*retain_graph=*/c10::nullopt, /*create_graph=*/false,
                                           /*allow_unused=*/true);
    at::NoGradGuard no_grad;
    const at::Tensor x = in.x.detach(), w = in.weight.detach(), g = gate.detach();
    const at::Tensor inv = at::rsqrt(x.pow(2).mean(-1, true) + eps);
    const at::Tensor n = x * inv;
    const at::Tensor sig = at::sigmoid(g);
    const at::Tensor s = gated ? g * sig : at::ones_like(g);
    const at::Tensor dn = d_y * s * w;
    const at::Tensor d_x = inv * (dn - n * (dn * n).mean(-1, true));
    const at::Tensor d_w = (d_y * s * n).reshape({-1, x.size(-1)}).sum(0);
    EXPECT_LE(MaxRel(d_x, ref[0]), 1e-12) << gated;
    EXPECT_LE(MaxRel(d_w, ref[1]), 1e-12) << gated;
    if (gated) {
      const at::Tensor d_g = d_y * w * n * sig * (1 + g * (1 - sig));
      EXPECT_LE(MaxRel(d_g.reshape(in.gate.sizes()), ref[2]), 1e-12);
    } else {
      EXPECT_FALSE(ref[2].defined());
    }
  }
}

TEST(RmsNormGatedTest, CpuKeepsTheReferenceRoundings) {
  torch::manual_seed(5);
  const GatedInputs in = MakeGated(2, 2, 3, 64, at::kBFloat16);
  const at::Tensor x32 = in.x.detach().to(at::kFloat);
  const at::Tensor normed = (x32 * at::rsqrt(x32.pow(2).mean(-1, true) + 1e-6)).to(at::kBFloat16);
  const at::Tensor plain = in.weight.detach() * normed;
  EXPECT_TRUE(at::equal(RmsNorm(in.x, in.weight, 1e-6).detach(), plain));
  EXPECT_TRUE(at::equal(RmsNormGated(in.x, in.weight, in.gate, 1e-6).detach(),
                        plain * at::silu(in.gate.detach()).view(in.x.sizes())));
  EXPECT_EQ(RmsNormGated(in.x, in.weight, in.gate, 1e-6).scalar_type(), at::kBFloat16);
}

TEST(RmsNormGatedTest, RejectsAGateOfAnotherSize) {
  const at::Tensor x = at::randn({2, 3, 8});
  EXPECT_THROW(RmsNormGated(x, at::ones({8}), at::randn({2, 3, 9}), 1e-6), c10::Error);
  EXPECT_THROW(RmsNormGated(x, at::ones({7}), at::randn({2, 3, 8}), 1e-6), c10::Error);
}

TEST(RmsNormTileTest, PlansTheHeadAndHiddenSizes) {
  using cuda::PlanRmsNormTile;
  using cuda::RmsNormTile;
  RmsNormTile t;
  ASSERT_TRUE(PlanRmsNormTile(64, 2, &t));  // bf16 head: 8 vectors, 8 lanes, 32 rows a block
  EXPECT_EQ(t.vec, 8);
  EXPECT_EQ(t.threads_per_row, 8);
  EXPECT_EQ(t.vecs_per_thread, 1);
  EXPECT_EQ(t.block_threads, 256);
  EXPECT_EQ(t.rows_per_block, 32);
  ASSERT_TRUE(PlanRmsNormTile(128, 2, &t));
  EXPECT_EQ(t.threads_per_row, 16);
  ASSERT_TRUE(PlanRmsNormTile(256, 4, &t));  // fp32: 64 vectors, 2 per lane
  EXPECT_EQ(t.threads_per_row, 32);
  EXPECT_EQ(t.vecs_per_thread, 2);
  ASSERT_TRUE(PlanRmsNormTile(2048, 2, &t));  // bf16 hidden: a block of 128 per row
  EXPECT_EQ(t.threads_per_row, 128);
  EXPECT_EQ(t.block_threads, 128);
  EXPECT_EQ(t.vecs_per_thread, 2);
  EXPECT_EQ(t.rows_per_block, 1);
  ASSERT_TRUE(PlanRmsNormTile(8192, 4, &t));
  EXPECT_EQ(t.block_threads, 256);
  EXPECT_EQ(t.vecs_per_thread, 8);
  EXPECT_FALSE(PlanRmsNormTile(100, 2, &t));    // not whole vectors
  EXPECT_FALSE(PlanRmsNormTile(16384, 2, &t));  // over 32 elements a thread
  EXPECT_FALSE(PlanRmsNormTile(64, 8, &t));     // no fp64 kernel

  // Every plan covers its row within the register and shared-memory budgets.
  for (const int bytes : {2, 4}) {
    const int vec = 16 / bytes;
    for (int64_t cols = vec; cols <= 8192; cols += vec) {
      ASSERT_TRUE(PlanRmsNormTile(cols, bytes, &t)) << cols;
      const int64_t nvec = cols / vec;
      EXPECT_GE(static_cast<int64_t>(t.threads_per_row) * t.vecs_per_thread, nvec) << cols;
      EXPECT_LT(static_cast<int64_t>(t.threads_per_row) * t.vecs_per_thread, 2 * nvec + 32)
          << cols;
      EXPECT_LE(t.vecs_per_thread * vec, cuda::kRmsNormMaxThreadElems) << cols;
      EXPECT_EQ(t.block_threads % 32, 0) << cols;
      EXPECT_EQ(t.block_threads, t.threads_per_row * t.rows_per_block) << cols;
      if (t.rows_per_block > 1) {
        EXPECT_LE(t.threads_per_row, 32) << cols;
        EXPECT_LE(cols, cuda::kRmsNormMaxWarpRowVecs * 8) << cols;  // the shared d_weight row
      }
    }
  }
}

TEST(RmsNormTileTest, GridStaysWithinAWave) {
  cuda::RmsNormTile t;
  ASSERT_TRUE(cuda::PlanRmsNormTile(64, 2, &t));
  EXPECT_EQ(cuda::RmsNormGridBlocks(t, 1, 132, 2048), 1);
  EXPECT_EQ(cuda::RmsNormGridBlocks(t, 33, 132, 2048), 2);
  EXPECT_EQ(cuda::RmsNormGridBlocks(t, 1 << 20, 132, 2048), 132 * 8);
  EXPECT_EQ(cuda::RmsNormGridBlocks(t, 1 << 20, 132, 1024), 132 * 4);
  EXPECT_EQ(cuda::RmsNormGridBlocks(t, 0, 132, 1024), 1);
  ASSERT_TRUE(cuda::PlanRmsNormTile(2048, 2, &t));  // 128 threads, a row each
  EXPECT_EQ(cuda::RmsNormGridBlocks(t, 100, 132, 1024), 100);
  EXPECT_EQ(cuda::RmsNormGridBlocks(t, 16384, 132, 1024), 132 * 8);
}

// Row start offsets of a strided tensor from its data pointer, read from the tensor itself (its
// elements are their own storage offsets).
std::vector<int64_t> RowStarts(const at::Tensor& x) {
  const at::Tensor firsts =
      (x.reshape({-1, x.size(-1)}).select(1, 0) - x.storage_offset()).contiguous();
  return std::vector<int64_t>(firsts.data_ptr<int64_t>(),
                              firsts.data_ptr<int64_t>() + firsts.numel());
}

std::vector<int64_t> LayoutStarts(const cuda::RmsNormRows& rows, int64_t count) {
  std::vector<int64_t> starts;
  for (int64_t r = 0; r < count; ++r) starts.push_back(cuda::RmsNormRowOffset(rows, r));
  return starts;
}

TEST(RmsNormRowsTest, CollapsesTheLayoutsTheMixersMake) {
  const at::Tensor base = at::arange(2 * 3 * 5 * 8, at::kLong);
  const std::vector<std::pair<const char*, at::Tensor>> cases = {
      {"contiguous", base.view({2, 3, 5, 8})},
      {"transposed heads", base.view({2, 3, 5, 8}).transpose(1, 2)},
      {"a narrowed last dim", base.view({30, 8}).narrow(1, 0, 4)},
      {"a size-1 dim", base.view({2, 1, 15, 8}).transpose(1, 2)},
      {"a selected step", base.view({2, 3, 5, 8}).select(2, 1)},
  };
  for (const auto& [name, x] : cases) {
    cuda::RmsNormRows rows;
    ASSERT_TRUE(cuda::CollapseRmsNormRows(x.sizes().data(), x.strides().data(),
                                          static_cast<int>(x.dim()), &rows))
        << name;
    const int64_t count = x.numel() / x.size(-1);
    EXPECT_EQ(rows.sizes[0] * rows.sizes[1] * rows.sizes[2], count) << name;
    EXPECT_EQ(LayoutStarts(rows, count), RowStarts(x)) << name;
  }
  cuda::RmsNormRows rows;
  const at::Tensor four = base.view({2, 3, 5, 4, 2}).permute({3, 1, 0, 2, 4});
  EXPECT_FALSE(cuda::CollapseRmsNormRows(four.sizes().data(), four.strides().data(), 5, &rows));
  const at::Tensor columns = base.view({30, 8}).t();
  EXPECT_FALSE(cuda::CollapseRmsNormRows(columns.sizes().data(), columns.strides().data(), 2,
                                         &rows));
}

TEST(RmsNormRowsTest, OffsetsPastThirtyTwoBits) {
  cuda::RmsNormRows rows;
  rows.sizes[0] = 3;
  rows.sizes[1] = 5;
  rows.sizes[2] = int64_t{1} << 31;
  rows.strides[0] = 7;
  rows.strides[1] = int64_t{1} << 40;
  rows.strides[2] = 64;
  const int64_t row = (2 * 5 + 4) * rows.sizes[2] + 12345;
  EXPECT_EQ(cuda::RmsNormRowOffset(rows, row), 2 * 7 + 4 * (int64_t{1} << 40) + 12345 * 64);
  EXPECT_EQ(cuda::RmsNormRowOffset(rows, 12345), 12345 * 64);
}

}  // namespace
}  // namespace hyb::kernels
