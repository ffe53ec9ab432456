#include "hyb/kernels/attention.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

// The split planning and key-range math of the CUDA decoding kernel (torch- and CUDA-free part).
#define HYB_ATTENTION_DECODE_PLAN_ONLY
#include "../../kernels/cuda/attention_decode_launch.h"

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

// The positioned single query: key_end (a device scalar on CUDA) instead of a key mask, over a
// buffer longer than the visible keys; equal to attention over exactly the visible keys.
TEST(AttentionTest, KeyEndSeesTheBufferUpToTheEndAndInsideTheWindow) {
  torch::manual_seed(5);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const int64_t cap = 12;
  const at::Tensor k = at::randn({2, 2, cap, 8}, opts);
  const at::Tensor v = at::randn({2, 2, cap, 8}, opts);
  const at::Tensor q = at::randn({2, 4, 1, 8}, opts);
  for (const int64_t end : {0, 1, 5, 11}) {
    for (const int64_t window : {0, 1, 3, 40}) {
      AttentionOptions o;
      o.sliding_window = window;
      o.scale = 0.3;
      o.key_end = at::full({1}, end, at::kLong);
      AttentionOptions tight = o;
      tight.key_end = at::Tensor();
      tight.q_offset = end;
      const at::Tensor want = LoopAttention(q, k.narrow(2, 0, end + 1), v.narrow(2, 0, end + 1),
                                            tight);
      for (bool force_math : {true, false}) {
        o.force_math = force_math;
        const at::Tensor got = SoftmaxAttention(q, k, v, o);
        EXPECT_LT((got - want).abs().max().item<double>(), 1e-10)
            << "end=" << end << " window=" << window << " math=" << force_math;
      }
    }
  }
  AttentionOptions both;
  both.key_end = at::full({1}, 3, at::kLong);
  both.key_mask = at::ones({cap}, at::kBool);
  EXPECT_THROW(SoftmaxAttention(q, k, v, both), c10::Error);
  AttentionOptions many;
  many.key_end = at::full({1}, 3, at::kLong);
  EXPECT_THROW(SoftmaxAttention(at::randn({2, 4, 2, 8}, opts), k, v, many), c10::Error);
}

// The launch geometry of the CUDA decoding kernel: splits cover the buffer, enough blocks for the
// device, head chunks cover each key/value group.
TEST(AttentionDecodePlanTest, GeometryCoversTheBufferAndFillsTheDevice) {
  using namespace hyb::kernels::cuda;
  for (const int64_t batch : {1, 3, 32}) {
    for (const auto& [heads, kv_heads] : std::vector<std::pair<int64_t, int64_t>>{
             {32, 8}, {16, 16}, {14, 2}, {64, 4}, {12, 12}, {40, 1}}) {
      for (const int64_t cap : {1, 100, 4096, 65536 + 7, 1 << 20}) {
        const int64_t group = heads / kv_heads;
        const AttentionDecodePlan p = PlanAttentionDecode(batch, kv_heads, group, cap, 132);
        SCOPED_TRACE(testing::Message() << "B=" << batch << " H=" << heads << " Hkv=" << kv_heads
                                        << " cap=" << cap);
        EXPECT_GE(p.num_splits * p.split_size, cap);
        EXPECT_LT((p.num_splits - 1) * p.split_size, cap);
        EXPECT_GE(p.num_splits, 1);
        EXPECT_LE(p.num_splits, kAttentionDecodeMaxSplits);
        EXPECT_EQ(p.split_size % kAttentionDecodeSplitAlign, 0);
        EXPECT_GE(p.split_size, kAttentionDecodeMinSplit);
        EXPECT_GE(p.head_chunks * p.chunk_heads, group);
        EXPECT_LT((p.head_chunks - 1) * p.chunk_heads, group);
        EXPECT_LE(p.chunk_heads, p.block_heads);
        EXPECT_LE(p.block_heads, kAttentionDecodeMaxBlockHeads);
        const int64_t blocks = batch * kv_heads * p.head_chunks * p.num_splits;
        // Long buffers fill 132 multiprocessors at least twice over.
        if (cap >= 65536) EXPECT_GE(blocks, 2 * 132);
      }
    }
  }
  // The 1B shape at 64K keys, batch 1: 8 key/value heads become hundreds of blocks.
  const AttentionDecodePlan p = PlanAttentionDecode(1, 8, 4, 65536, 132);
  EXPECT_EQ(p.block_heads, 4);
  EXPECT_EQ(p.head_chunks, 1);
  EXPECT_EQ(p.split_size, 1024);  // 65536 / 66 wanted splits, rounded up to 64 keys
  EXPECT_EQ(8 * p.num_splits, 512);
}

TEST(AttentionDecodePlanTest, SplitsPartitionTheVisibleKeys) {
  using namespace hyb::kernels::cuda;
  for (const int64_t cap : {1, 100, 300, 4096}) {
    const AttentionDecodePlan p = PlanAttentionDecode(1, 2, 2, cap, 132);
    for (const int64_t last : {-1L, 0L, 1L, cap / 2, cap - 1, cap + 5}) {
      for (const int64_t window : {0, 1, 37, 1000000}) {
        const KeyRange vis = VisibleKeys(last, window, cap);
        const int64_t e = std::min(last, cap - 1);
        const int64_t want_begin = window > 0 ? std::max<int64_t>(0, e - window + 1) : 0;
        if (e < 0) {
          EXPECT_EQ(vis.end - vis.begin, 0);
        } else {
          EXPECT_EQ(vis.begin, want_begin);
          EXPECT_EQ(vis.end, e + 1);
        }
        std::vector<int> seen(cap, 0);
        for (int64_t s = 0; s < p.num_splits; ++s) {
          const KeyRange r = SplitKeys(vis, s, p.split_size);
          EXPECT_LE(r.begin, r.end);
          for (int64_t j = r.begin; j < r.end; ++j) {
            ASSERT_GE(j, 0);
            ASSERT_LT(j, cap);
            EXPECT_GE(j, s * p.split_size);
            EXPECT_LT(j, (s + 1) * p.split_size);
            ++seen[j];
          }
        }
        for (int64_t j = 0; j < cap; ++j) {
          EXPECT_EQ(seen[j], (j >= vis.begin && j < vis.end) ? 1 : 0)
              << "cap=" << cap << " last=" << last << " window=" << window << " key=" << j;
        }
      }
    }
  }
}

// The kernel's arithmetic on the host, in double: per split the running maximum, sum and
// numerator of base-2 exponentials over SplitKeys(VisibleKeys(...)); splits without keys give
// maximum -inf and are skipped; the combine rescales to the largest maximum. Equal to attention
// over the visible keys.
TEST(AttentionDecodePlanTest, SplitAndCombineEqualAttentionOverTheVisibleKeys) {
  using namespace hyb::kernels::cuda;
  torch::manual_seed(9);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const double inf = std::numeric_limits<double>::infinity();
  const int64_t batch = 2, heads = 6, kv_heads = 2, dim = 8, cap = 300;
  const at::Tensor q = at::randn({batch, heads, 1, dim}, opts);
  const at::Tensor k = at::randn({batch, kv_heads, cap, dim}, opts) * 2;
  const at::Tensor v = at::randn({batch, kv_heads, cap, dim}, opts);
  const double scale = 0.4;
  const AttentionDecodePlan plan = PlanAttentionDecode(batch, kv_heads, heads / kv_heads, cap, 8);
  ASSERT_GT(plan.num_splits, 2);
  for (const int64_t last : {0L, 130L, cap - 1}) {
    for (const int64_t window : {0, 37}) {
      const KeyRange vis = VisibleKeys(last, window, cap);
      at::Tensor got = at::zeros({batch, heads, 1, dim}, opts);
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t g = h / (heads / kv_heads);
          std::vector<double> m(plan.num_splits, -inf), l(plan.num_splits, 0.0);
          std::vector<at::Tensor> acc(plan.num_splits);
          for (int64_t s = 0; s < plan.num_splits; ++s) {
            const KeyRange r = SplitKeys(vis, s, plan.split_size);
            if (r.begin >= r.end) continue;
            const at::Tensor scores =
                at::matmul(k[b][g].narrow(0, r.begin, r.end - r.begin), q[b][h][0]) * scale *
                M_LOG2E;
            m[s] = scores.max().item<double>();
            const at::Tensor w = at::exp2(scores - m[s]);
            l[s] = w.sum().item<double>();
            acc[s] = at::matmul(w, v[b][g].narrow(0, r.begin, r.end - r.begin));
          }
          const double mx = *std::max_element(m.begin(), m.end());
          double sum = 0;
          at::Tensor o = at::zeros({dim}, opts);
          for (int64_t s = 0; s < plan.num_splits; ++s) {
            if (m[s] == -inf) continue;
            const double w = std::exp2(m[s] - mx);
            sum += w * l[s];
            o += w * acc[s];
          }
          got[b][h][0] = o / sum;
        }
      }
      AttentionOptions o;
      o.sliding_window = window;
      o.scale = scale;
      o.q_offset = last;
      const at::Tensor want =
          LoopAttention(q, k.narrow(2, 0, last + 1), v.narrow(2, 0, last + 1), o);
      EXPECT_LT((got - want).abs().max().item<double>(), 1e-12)
          << "last=" << last << " window=" << window;
    }
  }
}

}  // namespace
}  // namespace hyb::kernels
