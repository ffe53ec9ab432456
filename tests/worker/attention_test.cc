#include "hyb/kernels/attention.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace hyb::kernels {
namespace {

// Per-query loop over allowed keys, double precision.
at::Tensor LoopAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const AttentionOptions& o) {
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2);
  const int64_t rep = H / k.size(1);
  at::Tensor out = at::zeros_like(q);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t pos = o.q_offset + i;
        std::vector<at::Tensor> scores;
        std::vector<int64_t> keys;
        for (int64_t j = 0; j < Tk; ++j) {
          if (j > pos || (o.sliding_window > 0 && j <= pos - o.sliding_window)) continue;
          scores.push_back(at::dot(q[b][h][i], k[b][h / rep][j]) * o.scale);
          keys.push_back(j);
        }
        const at::Tensor p = at::softmax(at::stack(scores), 0);
        for (size_t n = 0; n < keys.size(); ++n) out[b][h][i] += p[n] * v[b][h / rep][keys[n]];
      }
    }
  }
  return out;
}

struct Case {
  int64_t tq, tk, window;
};

TEST(AttentionTest, MatchesLoopReferenceForMasksAndGqa) {
  torch::manual_seed(3);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  for (const Case c : {Case{7, 7, 0}, Case{7, 7, 3}, Case{1, 9, 0}, Case{1, 9, 4}, Case{3, 8, 0},
                       Case{3, 8, 2}, Case{5, 5, 10}}) {
    const at::Tensor q = at::randn({2, 4, c.tq, 8}, opts);
    const at::Tensor k = at::randn({2, 2, c.tk, 8}, opts);
    const at::Tensor v = at::randn({2, 2, c.tk, 8}, opts);
    AttentionOptions o;
    o.q_offset = c.tk - c.tq;
    o.sliding_window = c.window;
    o.scale = 0.35;
    const at::Tensor want = LoopAttention(q, k, v, o);
    for (bool force_math : {true, false}) {
      o.force_math = force_math;
      const at::Tensor got = SoftmaxAttention(q, k, v, o);
      EXPECT_LT((got - want).abs().max().item<double>(), 1e-10)
          << "tq=" << c.tq << " tk=" << c.tk << " window=" << c.window << " math=" << force_math;
    }
  }
}

TEST(AttentionTest, MaskSemantics) {
  AttentionOptions o;
  o.q_offset = 2;
  o.sliding_window = 2;
  const at::Tensor m = AttentionMask(2, 4, o, at::kCPU);  // queries at positions 2 and 3
  const std::vector<std::vector<bool>> want = {{false, true, true, false},
                                               {false, false, true, true}};
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 4; ++j) EXPECT_EQ(m[i][j].item<bool>(), want[i][j]) << i << "," << j;
  }
}

TEST(AttentionTest, RejectsInconsistentShapes) {
  const at::Tensor q = at::randn({1, 3, 4, 8});
  const at::Tensor k = at::randn({1, 2, 4, 8});
  EXPECT_THROW(SoftmaxAttention(q, k, k, {}), c10::Error);  // 3 heads over 2 kv heads
  const at::Tensor q2 = at::randn({1, 4, 4, 8});
  AttentionOptions o;
  o.q_offset = 1;
  EXPECT_THROW(SoftmaxAttention(q2, k, k, o), c10::Error);  // offset + Tq != Tk
}

}  // namespace
}  // namespace hyb::kernels
