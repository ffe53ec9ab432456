// CPU tests of the short convolution: the dispatch and its reference against the mixers'
// CausalConv and against the definition (values and gradients in fp64, with and without the
// decoding cache, silu on and off), the cache streamed over chunks, and the CUDA kernels'
// per-thread tile code (kernels/cuda/short_conv_tile.h) run on the host over the launch grid the
// CUDA launcher plans, against the definition.
#include "hyb/kernels/short_conv.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#define HYB_SHORT_CONV_PLAN_ONLY
#include "../../kernels/cuda/short_conv_launch.h"
#include "../../kernels/cuda/short_conv_tile.h"

namespace hyb::kernels {
namespace {

double MaxAbs(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// The mixers' CausalConv (worker/src/linear_mixer.cc) as it was written before the fused
// kernels, followed by the mixer's silu: the reference must stay identical to it.
at::Tensor MixerCausalConv(const at::Tensor& u, const at::Tensor& w, at::Tensor* cache, bool silu) {
  const int64_t b = u.size(0), c = u.size(2), k = w.size(1);
  const at::Tensor ut = u.transpose(1, 2);  // [B, C, T]
  at::Tensor prev =
      (cache != nullptr && cache->defined()) ? *cache : at::zeros({b, c, k - 1}, u.options());
  const at::Tensor full = at::cat({prev, ut}, 2);  // [B, C, K-1+T]
  const std::vector<int64_t> one = {1}, zero = {0};
  const at::Tensor y = at::conv1d(full, w.unsqueeze(1), at::Tensor(), at::IntArrayRef(one),
                                  at::IntArrayRef(zero), at::IntArrayRef(one), c);  // [B, C, T]
  if (cache != nullptr) {
    const at::Tensor last = full.narrow(2, full.size(2) - (k - 1), k - 1);
    if (cache->defined() && cache->sizes() == last.sizes()) {
      cache->copy_(last);
    } else {
      *cache = last.clone();
    }
  }
  const at::Tensor out = y.transpose(1, 2);
  return silu ? at::silu(out) : out;
}

// The definition, from shifted slices (no convolution op): x = cat(prev or zeros, u) over time,
// y[t] = sum_j w[:, j] * x[t + j], then silu.
at::Tensor Definition(const at::Tensor& u, const at::Tensor& w, const at::Tensor& prev, bool silu) {
  const int64_t b = u.size(0), t = u.size(1), c = u.size(2), k = w.size(1);
  const at::Tensor before =
      prev.defined() ? prev.transpose(1, 2) : at::zeros({b, k - 1, c}, u.options());
  const at::Tensor x = at::cat({before, u}, 1);  // [B, K-1+T, C]
  at::Tensor y = at::zeros({b, t, c}, u.options());
  for (int64_t j = 0; j < k; ++j) y = y + x.narrow(1, j, t) * w.select(1, j);
  return silu ? y * at::sigmoid(y) : y;
}

// u as the mixers pass it: a column slice of a [B, T, 3C] projection.
at::Tensor StridedInput(int64_t b, int64_t t, int64_t c, at::ScalarType type) {
  return at::randn({b, t, 3 * c}, at::TensorOptions().dtype(type)).narrow(2, c, c);
}

TEST(ShortConvTest, ReferenceAndDispatchEqualTheMixersCausalConv) {
  torch::manual_seed(31);
  for (const at::ScalarType type : {at::kFloat, at::kDouble}) {
    for (const int64_t k : {2, 4}) {
      for (const int64_t t : {1, 3, 7}) {
        for (const bool silu : {false, true}) {
          for (const bool with_cache : {false, true}) {
            const std::string what = std::string(c10::toString(type)) + " K" + std::to_string(k) +
                                     " T" + std::to_string(t) + (silu ? " silu" : "") +
                                     (with_cache ? " cache" : "");
            const at::Tensor u = StridedInput(2, t, 8, type);
            const at::Tensor w = at::randn({8, k}, u.options());
            const at::Tensor start = at::randn({2, 8, k - 1}, u.options());
            at::Tensor want_cache = start.clone(), ref_cache = start.clone(),
                       got_cache = start.clone();
            const void* buffer = got_cache.data_ptr();
            at::Tensor* no_cache = nullptr;
            const at::Tensor want =
                MixerCausalConv(u, w, with_cache ? &want_cache : no_cache, silu);
            const at::Tensor ref =
                ShortConvReference(u, w, with_cache ? &ref_cache : no_cache, silu);
            const at::Tensor got = ShortConv(u, w, with_cache ? &got_cache : no_cache, silu);
            EXPECT_TRUE(at::equal(ref, want)) << what;
            EXPECT_TRUE(at::equal(got, want)) << what;
            EXPECT_TRUE(at::equal(ref_cache, want_cache)) << what;
            EXPECT_TRUE(at::equal(got_cache, want_cache)) << what;
            EXPECT_EQ(got_cache.data_ptr(), buffer) << what << ": the cache moved";
          }
        }
      }
    }
  }
}

TEST(ShortConvTest, EqualsTheDefinitionWithGradients) {
  torch::manual_seed(32);
  for (const int64_t k : {2, 3, 4}) {
    for (const int64_t t : {1, 2, 5, 40}) {
      for (const bool silu : {false, true}) {
        for (const bool with_cache : {false, true}) {
          const std::string what = "K" + std::to_string(k) + " T" + std::to_string(t) +
                                   (silu ? " silu" : "") + (with_cache ? " cache" : "");
          const at::Tensor u = StridedInput(3, t, 12, at::kDouble).requires_grad_(true);
          const at::Tensor w = at::randn({12, k}, at::kDouble).requires_grad_(true);
          const at::Tensor prev =
              with_cache ? at::randn({3, 12, k - 1}, at::kDouble) : at::Tensor();
          at::Tensor cache = with_cache ? prev.clone() : at::Tensor();
          const at::Tensor got = ShortConv(u, w, with_cache ? &cache : nullptr, silu);
          const at::Tensor want = Definition(u, w, prev, silu);
          EXPECT_LE(MaxAbs(got, want), 1e-12) << what;
          const at::Tensor d_out = at::randn(want.sizes(), at::kDouble);
          const auto g = torch::autograd::grad({got}, {u, w}, {d_out});
          const auto e = torch::autograd::grad({want}, {u, w}, {d_out});
          EXPECT_LE(MaxAbs(g[0], e[0]), 1e-12) << what << " d_u";
          EXPECT_LE(MaxAbs(g[1], e[1]), 1e-12) << what << " d_w";
        }
      }
    }
  }
}

// Decoding: chunks of any length (shorter than K-1 too) with the cache give the outputs of one
// call over the whole sequence; the cache stays in its buffer and ends with the last K-1 inputs.
// An undefined cache is set (zeros as the previous inputs).
TEST(ShortConvTest, CacheCarriesChunksLikeOneCall) {
  torch::manual_seed(33);
  at::NoGradGuard no_grad;
  for (const int64_t k : {2, 4}) {
    for (const bool silu : {false, true}) {
      const at::Tensor u = at::randn({2, 20, 16}, at::kDouble);
      const at::Tensor w = at::randn({16, k}, at::kDouble);
      const at::Tensor whole = ShortConv(u, w, nullptr, silu);
      at::Tensor cache;
      std::vector<at::Tensor> parts;
      int64_t at_step = 0;
      const void* buffer = nullptr;
      for (const int64_t len : {1, 1, 2, 5, 1, 10}) {
        parts.push_back(ShortConv(u.narrow(1, at_step, len), w, &cache, silu));
        ASSERT_TRUE(cache.defined());
        ASSERT_EQ(cache.sizes(), (at::IntArrayRef{2, 16, k - 1}));
        if (buffer == nullptr) buffer = cache.data_ptr();
        EXPECT_EQ(cache.data_ptr(), buffer) << "K" << k;
        at_step += len;
      }
      ASSERT_EQ(at_step, 20);
      EXPECT_LE(MaxAbs(at::cat(parts, 1), whole), 1e-12) << "K" << k;
      EXPECT_TRUE(at::equal(cache, u.narrow(1, 20 - (k - 1), k - 1).transpose(1, 2))) << "K" << k;
    }
  }
}

TEST(ShortConvTest, RejectsMismatchedShapes) {
  const at::Tensor u = at::randn({2, 3, 8});
  EXPECT_THROW(ShortConv(u, at::randn({4, 4}), nullptr, false), c10::Error);
  at::Tensor cache = at::randn({2, 5, 3});
  EXPECT_THROW(ShortConv(u, at::randn({8, 4}), &cache, false), c10::Error);
}

// ---- The CUDA kernels' tile code on the host ----

using cuda::kShortConvBlockX;
using cuda::kShortConvBlockY;
using cuda::kShortConvTimeTile;
using cuda::kShortConvVec;

// The io of the tile functions over fp64 tensors, for sequence b at channels c..c+N-1.
struct HostIo {
  at::TensorAccessor<double, 3> u, prev, y, d_out, d_u;
  bool has_prev = false, silu = false;
  int64_t b = 0, c = 0, k = 0;

  void Input(int64_t s, double (&v)[kShortConvVec]) const {
    for (int i = 0; i < kShortConvVec; ++i) {
      v[i] = s >= 0 ? u[b][s][c + i] : (has_prev ? prev[b][c + i][k - 1 + s] : 0.0);
    }
  }
  void Output(int64_t t, double (&v)[kShortConvVec]) {
    for (int i = 0; i < kShortConvVec; ++i) {
      y[b][t][c + i] = silu ? v[i] * Sigmoid(v[i]) : v[i];
    }
  }
  void DOut(int64_t s, double (&v)[kShortConvVec]) const {
    for (int i = 0; i < kShortConvVec; ++i) v[i] = d_out[b][s][c + i];
  }
  double Sigmoid(double v) const { return 1.0 / (1.0 + std::exp(-v)); }
  void DInput(int64_t t, const double (&v)[kShortConvVec]) {
    for (int i = 0; i < kShortConvVec; ++i) d_u[b][t][c + i] = v[i];
  }
};

struct HostRun {
  at::Tensor y, cache, d_u, d_w;
};

// What the forward and backward launches compute, thread by thread over the planned grid (the
// forward kernel's cache write for one tile per sequence, else the copy kernel's), in fp64.
template <int K, bool kSilu>
HostRun RunTilesOnHost(const at::Tensor& u, const at::Tensor& w, const at::Tensor& prev,
                       const at::Tensor& d_out, int num_sms) {
  const int64_t b_n = u.size(0), t_n = u.size(1), c_n = u.size(2);
  const auto nan = at::TensorOptions().dtype(at::kDouble);
  HostRun r;
  r.y = at::full({b_n, t_n, c_n}, NAN, nan);
  r.d_u = at::full({b_n, t_n, c_n}, NAN, nan);
  r.cache = at::full({b_n, c_n, K - 1}, NAN, nan);
  r.d_w = at::zeros({c_n, K}, nan);
  const at::Tensor prev_or_dummy = prev.defined() ? prev : at::zeros({1, 1, 1}, nan);
  auto acc_w = w.accessor<double, 2>();
  auto acc_cache = r.cache.accessor<double, 3>();
  auto acc_dw = r.d_w.accessor<double, 2>();
  for (const int blocks_per_sm :
       {cuda::kShortConvForwardBlocksPerSm, cuda::kShortConvBackwardBlocksPerSm}) {
    const bool forward = blocks_per_sm == cuda::kShortConvForwardBlocksPerSm;
    const cuda::ShortConvGrid g = cuda::PlanShortConvGrid(b_n, t_n, c_n, num_sms, blocks_per_sm);
    const int64_t tiles = b_n * g.tiles_per_seq;
    for (int64_t bx = 0; bx < g.blocks_x; ++bx) {
      for (int64_t by = 0; by < g.blocks_y; ++by) {
        for (int ty = 0; ty < kShortConvBlockY; ++ty) {
          for (int tx = 0; tx < kShortConvBlockX; ++tx) {
            const int64_t c = (bx * kShortConvBlockX + tx) * kShortConvVec;
            if (c >= c_n) continue;
            double wr[K][kShortConvVec], d_w[K][kShortConvVec] = {};
            for (int i = 0; i < kShortConvVec; ++i) {
              for (int j = 0; j < K; ++j) wr[j][i] = acc_w[c + i][j];
            }
            for (int64_t tile = by * kShortConvBlockY + ty; tile < tiles;
                 tile += g.blocks_y * kShortConvBlockY) {
              HostIo io{u.accessor<double, 3>(), prev_or_dummy.accessor<double, 3>(),
                        r.y.accessor<double, 3>(), d_out.accessor<double, 3>(),
                        r.d_u.accessor<double, 3>()};
              io.has_prev = prev.defined();
              io.silu = kSilu;
              io.k = K;
              io.b = tile / g.tiles_per_seq;
              io.c = c;
              const int64_t t0 = (tile % g.tiles_per_seq) * kShortConvTimeTile;
              const int64_t t_end = std::min(t0 + kShortConvTimeTile, t_n);
              if (forward) {
                double win[K][kShortConvVec];
                cuda::ShortConvForwardTile<K, kShortConvVec, cuda::kShortConvForwardSteps, double>(
                    wr, t0, t_end, io, win);
                if (g.tiles_per_seq == 1) {
                  for (int i = 0; i < kShortConvVec; ++i) {
                    for (int s = 0; s + 1 < K; ++s) acc_cache[io.b][c + i][s] = win[s][i];
                  }
                }
              } else {
                cuda::ShortConvBackwardTile<K, kShortConvVec, cuda::kShortConvBackwardSteps, kSilu,
                                            double>(wr, t0, t_end, t_n, io, d_w);
              }
            }
            for (int i = 0; i < kShortConvVec; ++i) {
              for (int j = 0; j < K; ++j) acc_dw[c + i][j] += d_w[j][i];
            }
          }
        }
      }
    }
    if (forward && g.tiles_per_seq > 1) {  // the copy kernel
      r.cache.copy_(u.narrow(1, t_n - (K - 1), K - 1).transpose(1, 2));
    }
  }
  return r;
}

template <int K, bool kSilu>
void CheckTilesOnHost(int64_t b, int64_t t, int64_t c, bool with_prev, int num_sms) {
  const std::string what = "K" + std::to_string(K) + " T" + std::to_string(t) + " C" +
                           std::to_string(c) + (kSilu ? " silu" : "") + (with_prev ? " prev" : "") +
                           " SMs " + std::to_string(num_sms);
  const at::Tensor u = at::randn({b, t, c}, at::kDouble).requires_grad_(true);
  const at::Tensor w = at::randn({c, K}, at::kDouble).requires_grad_(true);
  const at::Tensor prev = with_prev ? at::randn({b, c, K - 1}, at::kDouble) : at::Tensor();
  const at::Tensor d_out = at::randn({b, t, c}, at::kDouble);
  const HostRun got = RunTilesOnHost<K, kSilu>(u.detach(), w.detach(), prev, d_out, num_sms);
  const at::Tensor want = Definition(u, w, prev, kSilu);
  const auto grads = torch::autograd::grad({want}, {u, w}, {d_out});
  EXPECT_LE(MaxAbs(got.y, want), 1e-12) << what << " y";  // NaN (a missed element) fails too
  EXPECT_LE(MaxAbs(got.d_u, grads[0]), 1e-12) << what << " d_u";
  EXPECT_LE(MaxAbs(got.d_w, grads[1]), 1e-10) << what << " d_w";
  // The last K-1 inputs of cat(prev or zeros, u).
  const at::Tensor before = with_prev ? prev : at::zeros({b, c, K - 1}, at::kDouble);
  const at::Tensor full = at::cat({before, u.detach().transpose(1, 2)}, 2);
  EXPECT_LE(MaxAbs(got.cache, full.narrow(2, t, K - 1)), 0.0) << what << " cache";
}

TEST(ShortConvTileTest, KernelTileCodeOverTheGridEqualsTheDefinition) {
  torch::manual_seed(34);
  for (const int64_t t : {1, 2, 3, 4, 5, 31, 32, 33, 65, 100}) {
    for (const bool with_prev : {false, true}) {
      // 1 SM: few blocks, every thread strides over several tiles; 64: a block per tile group.
      for (const int num_sms : {1, 64}) {
        CheckTilesOnHost<2, false>(2, t, 8, with_prev, num_sms);
        CheckTilesOnHost<2, true>(2, t, 8, with_prev, num_sms);
        CheckTilesOnHost<4, false>(3, t, 136, with_prev, num_sms);  // two channel blocks
        CheckTilesOnHost<4, true>(2, t, 8, with_prev, num_sms);
        CheckTilesOnHost<3, true>(1, t, 4, with_prev, num_sms);
        CheckTilesOnHost<8, false>(2, t, 8, with_prev, num_sms);
      }
    }
  }
}

TEST(ShortConvTileTest, GridCoversChannelsAndTiles) {
  // The distillation's shape on an H200: 16 sequences of 1,024, C = 4096.
  const cuda::ShortConvGrid g = cuda::PlanShortConvGrid(16, 1024, 4096, 132, 8);
  EXPECT_EQ(g.tiles_per_seq, 32);
  EXPECT_EQ(g.blocks_x, 4096 / (kShortConvVec * kShortConvBlockX));
  EXPECT_EQ(g.blocks_y, (132 * 8 + g.blocks_x - 1) / g.blocks_x);
  // A decoding step: one tile per sequence, one row of blocks.
  const cuda::ShortConvGrid step = cuda::PlanShortConvGrid(1, 1, 2048, 132, 8);
  EXPECT_EQ(step.tiles_per_seq, 1);
  EXPECT_EQ(step.blocks_y, 1);
  EXPECT_EQ(step.blocks_x, 2048 / (kShortConvVec * kShortConvBlockX));
  // No steps: still a valid grid.
  const cuda::ShortConvGrid none = cuda::PlanShortConvGrid(0, 0, 64, 132, 8);
  EXPECT_GE(none.tiles_per_seq, 1);
  EXPECT_GE(none.blocks_y, 1);
}

}  // namespace
}  // namespace hyb::kernels
