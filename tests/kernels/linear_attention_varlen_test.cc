// Packed variable-length batches (cu_seqlens) of the chunked GLA and Gated DeltaNet operators on
// the CPU: the varlen references equal separate runs of each sequence and the token-by-token
// recurrences, their backward references equal autograd through the forward, and bad offsets
// are rejected with errors that name them.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "hyb/kernels/linear_attention.h"

namespace hyb::kernels {
namespace {

struct Packed {
  std::vector<int64_t> cu;  // N + 1 offsets
  at::Tensor q, k, v, g_vec, g_head, beta, s0;
};

// Sequences of `lengths` packed into one row (B = 1), fp64, with realistic ranges (log decays in
// [-1.5, 0), beta in (0, 1), L2-normalised keys) and an initial state per sequence.
Packed MakePacked(const std::vector<int64_t>& lengths, int64_t h, int64_t dk, int64_t dv,
                  uint64_t seed) {
  torch::manual_seed(seed);
  Packed p;
  p.cu = {0};
  for (const int64_t len : lengths) p.cu.push_back(p.cu.back() + len);
  const int64_t t = p.cu.back(), n = static_cast<int64_t>(lengths.size());
  const auto o = at::TensorOptions().dtype(at::kDouble);
  p.q = at::randn({1, h, t, dk}, o);
  p.k = at::randn({1, h, t, dk}, o);
  p.k = p.k / p.k.norm(2, -1, true);
  p.v = at::randn({1, h, t, dv}, o);
  p.g_vec = -1.5 * at::rand({1, h, t, dk}, o);
  p.g_head = -1.5 * at::rand({1, h, t}, o);
  p.beta = at::sigmoid(at::randn({1, h, t}, o));
  p.s0 = 0.5 * at::randn({n, h, dk, dv}, o);
  return p;
}

at::Tensor Seq(const at::Tensor& x, const std::vector<int64_t>& cu, size_t i) {
  return x.narrow(2, cu[i], cu[i + 1] - cu[i]);
}

double MaxAbs(const at::Tensor& a, const at::Tensor& b) {
  return a.numel() == 0 ? 0.0 : (a - b).abs().max().item<double>();
}

// Lengths around the chunk (4 here), empty and single-token sequences among them.
const std::vector<int64_t> kLengths = {5, 0, 1, 4, 3, 9, 0, 12};
constexpr int64_t kChunk = 4;

TEST(LinearAttentionVarlenTest, GlaEqualsSeparateRunsAndTheRecurrence) {
  const Packed p = MakePacked(kLengths, 2, 3, 5, 1);
  const auto packed = GlaChunkedVarlenReference(p.q, p.k, p.v, p.g_vec, 0.7, p.s0, p.cu, kChunk);
  ASSERT_EQ(packed.output.sizes(), p.v.sizes());
  ASSERT_EQ(packed.final_state.sizes(), p.s0.sizes());
  const auto dispatched = GlaChunkedVarlen(p.q, p.k, p.v, p.g_vec, 0.7, p.s0, p.cu, kChunk);
  EXPECT_TRUE(at::equal(dispatched.output, packed.output));
  EXPECT_TRUE(at::equal(dispatched.final_state, packed.final_state));
  for (size_t i = 0; i + 1 < p.cu.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "sequence " << i);
    const at::Tensor s0 = p.s0.narrow(0, static_cast<int64_t>(i), 1);
    const at::Tensor final_state = packed.final_state.narrow(0, static_cast<int64_t>(i), 1);
    if (p.cu[i + 1] == p.cu[i]) {
      EXPECT_TRUE(at::equal(final_state, s0)) << "an empty sequence keeps its state";
      continue;
    }
    const auto rec = GlaRecurrent(Seq(p.q, p.cu, i), Seq(p.k, p.cu, i), Seq(p.v, p.cu, i),
                                  Seq(p.g_vec, p.cu, i), 0.7, s0);
    const auto alone = GlaChunkedReference(Seq(p.q, p.cu, i), Seq(p.k, p.cu, i), Seq(p.v, p.cu, i),
                                           Seq(p.g_vec, p.cu, i), 0.7, s0, kChunk);
    EXPECT_TRUE(at::equal(Seq(packed.output, p.cu, i), alone.output));
    EXPECT_TRUE(at::equal(final_state, alone.final_state));
    EXPECT_LT(MaxAbs(Seq(packed.output, p.cu, i), rec.output), 1e-10);
    EXPECT_LT(MaxAbs(final_state, rec.final_state), 1e-10);
  }
}

TEST(LinearAttentionVarlenTest, GatedDeltaEqualsSeparateRunsAndTheRecurrence) {
  const Packed p = MakePacked(kLengths, 2, 4, 3, 2);
  const auto packed =
      GatedDeltaChunkedVarlenReference(p.q, p.k, p.v, p.g_head, p.beta, 0.6, p.s0, p.cu, kChunk);
  const auto dispatched =
      GatedDeltaChunkedVarlen(p.q, p.k, p.v, p.g_head, p.beta, 0.6, p.s0, p.cu, kChunk);
  EXPECT_TRUE(at::equal(dispatched.output, packed.output));
  EXPECT_TRUE(at::equal(dispatched.final_state, packed.final_state));
  for (size_t i = 0; i + 1 < p.cu.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "sequence " << i);
    const at::Tensor s0 = p.s0.narrow(0, static_cast<int64_t>(i), 1);
    const at::Tensor final_state = packed.final_state.narrow(0, static_cast<int64_t>(i), 1);
    if (p.cu[i + 1] == p.cu[i]) {
      EXPECT_TRUE(at::equal(final_state, s0)) << "an empty sequence keeps its state";
      continue;
    }
    const auto alone =
        GatedDeltaChunkedReference(Seq(p.q, p.cu, i), Seq(p.k, p.cu, i), Seq(p.v, p.cu, i),
                                   Seq(p.g_head, p.cu, i), Seq(p.beta, p.cu, i), 0.6, s0, kChunk);
    const auto rec = GatedDeltaRecurrent(Seq(p.q, p.cu, i), Seq(p.k, p.cu, i), Seq(p.v, p.cu, i),
                                         Seq(p.g_head, p.cu, i), Seq(p.beta, p.cu, i), 0.6, s0);
    EXPECT_TRUE(at::equal(Seq(packed.output, p.cu, i), alone.output));
    EXPECT_TRUE(at::equal(final_state, alone.final_state));
    EXPECT_LT(MaxAbs(Seq(packed.output, p.cu, i), rec.output), 1e-10);
    EXPECT_LT(MaxAbs(final_state, rec.final_state), 1e-10);
  }
}

// Without an initial state every sequence starts from zeros (not from its predecessor's end).
TEST(LinearAttentionVarlenTest, NoInitialStateStartsEverySequenceFromZero) {
  const Packed p = MakePacked({3, 6}, 1, 2, 2, 3);
  const auto packed = GlaChunkedVarlen(p.q, p.k, p.v, p.g_vec, 1.0, {}, p.cu, kChunk);
  const auto second = GlaChunkedReference(Seq(p.q, p.cu, 1), Seq(p.k, p.cu, 1), Seq(p.v, p.cu, 1),
                                          Seq(p.g_vec, p.cu, 1), 1.0, {}, kChunk);
  EXPECT_TRUE(at::equal(Seq(packed.output, p.cu, 1), second.output));
  EXPECT_TRUE(at::equal(packed.final_state.narrow(0, 1, 1), second.final_state));
}

TEST(LinearAttentionVarlenTest, GlaBackwardEqualsAutogradAndSeparateRuns) {
  const Packed p = MakePacked(kLengths, 2, 3, 4, 4);
  auto leaf = [](const at::Tensor& x) { return x.detach().clone().requires_grad_(true); };
  const at::Tensor q = leaf(p.q), k = leaf(p.k), v = leaf(p.v), g = leaf(p.g_vec);
  const at::Tensor s0 = leaf(p.s0);
  const auto r = GlaChunkedVarlen(q, k, v, g, 0.8, s0, p.cu, kChunk);
  const at::Tensor d_o = at::randn_like(p.v), d_s = at::randn_like(p.s0);
  torch::autograd::backward({r.output, r.final_state}, {d_o, d_s});
  const auto want =
      GlaChunkedVarlenBackwardReference(p.q, p.k, p.v, p.g_vec, 0.8, p.s0, d_o, d_s, p.cu, kChunk);
  EXPECT_LT(MaxAbs(q.grad(), want.dq), 1e-10);
  EXPECT_LT(MaxAbs(k.grad(), want.dk), 1e-10);
  EXPECT_LT(MaxAbs(v.grad(), want.dv), 1e-10);
  EXPECT_LT(MaxAbs(g.grad(), want.dg), 1e-10);
  EXPECT_LT(MaxAbs(s0.grad(), want.d_initial_state), 1e-10);
  for (size_t i = 0; i + 1 < p.cu.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "sequence " << i);
    const auto n = static_cast<int64_t>(i);
    if (p.cu[i + 1] == p.cu[i]) {
      EXPECT_TRUE(at::equal(want.d_initial_state.narrow(0, n, 1), d_s.narrow(0, n, 1)));
      continue;
    }
    const auto alone = GlaChunkedBackwardReference(
        Seq(p.q, p.cu, i), Seq(p.k, p.cu, i), Seq(p.v, p.cu, i), Seq(p.g_vec, p.cu, i), 0.8,
        p.s0.narrow(0, n, 1), Seq(d_o, p.cu, i), d_s.narrow(0, n, 1), kChunk);
    EXPECT_TRUE(at::equal(Seq(want.dq, p.cu, i), alone.dq));
    EXPECT_TRUE(at::equal(Seq(want.dk, p.cu, i), alone.dk));
    EXPECT_TRUE(at::equal(Seq(want.dv, p.cu, i), alone.dv));
    EXPECT_TRUE(at::equal(Seq(want.dg, p.cu, i), alone.dg));
    EXPECT_TRUE(at::equal(want.d_initial_state.narrow(0, n, 1), alone.d_initial_state));
  }
}

TEST(LinearAttentionVarlenTest, GatedDeltaBackwardEqualsAutogradAndSeparateRuns) {
  const Packed p = MakePacked(kLengths, 2, 4, 3, 5);
  auto leaf = [](const at::Tensor& x) { return x.detach().clone().requires_grad_(true); };
  const at::Tensor q = leaf(p.q), k = leaf(p.k), v = leaf(p.v), g = leaf(p.g_head);
  const at::Tensor beta = leaf(p.beta), s0 = leaf(p.s0);
  const auto r = GatedDeltaChunkedVarlen(q, k, v, g, beta, 0.5, s0, p.cu, kChunk);
  const at::Tensor d_o = at::randn_like(p.v), d_s = at::randn_like(p.s0);
  torch::autograd::backward({r.output, r.final_state}, {d_o, d_s});
  const auto want = GatedDeltaChunkedVarlenBackwardReference(p.q, p.k, p.v, p.g_head, p.beta, 0.5,
                                                             p.s0, d_o, d_s, p.cu, kChunk);
  EXPECT_LT(MaxAbs(q.grad(), want.dq), 1e-10);
  EXPECT_LT(MaxAbs(k.grad(), want.dk), 1e-10);
  EXPECT_LT(MaxAbs(v.grad(), want.dv), 1e-10);
  EXPECT_LT(MaxAbs(g.grad(), want.dg), 1e-10);
  EXPECT_LT(MaxAbs(beta.grad(), want.dbeta), 1e-10);
  EXPECT_LT(MaxAbs(s0.grad(), want.d_initial_state), 1e-10);
  for (size_t i = 0; i + 1 < p.cu.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "sequence " << i);
    const auto n = static_cast<int64_t>(i);
    if (p.cu[i + 1] == p.cu[i]) {
      EXPECT_TRUE(at::equal(want.d_initial_state.narrow(0, n, 1), d_s.narrow(0, n, 1)));
      continue;
    }
    const auto alone = GatedDeltaChunkedBackwardReference(
        Seq(p.q, p.cu, i), Seq(p.k, p.cu, i), Seq(p.v, p.cu, i), Seq(p.g_head, p.cu, i),
        Seq(p.beta, p.cu, i), 0.5, p.s0.narrow(0, n, 1), Seq(d_o, p.cu, i), d_s.narrow(0, n, 1),
        kChunk);
    EXPECT_TRUE(at::equal(Seq(want.dq, p.cu, i), alone.dq));
    EXPECT_TRUE(at::equal(Seq(want.dk, p.cu, i), alone.dk));
    EXPECT_TRUE(at::equal(Seq(want.dv, p.cu, i), alone.dv));
    EXPECT_TRUE(at::equal(Seq(want.dg, p.cu, i), alone.dg));
    EXPECT_TRUE(at::equal(Seq(want.dbeta, p.cu, i), alone.dbeta));
    EXPECT_TRUE(at::equal(want.d_initial_state.narrow(0, n, 1), alone.d_initial_state));
  }
}

// Runs `call` and returns the message of the c10::Error it throws ("" when it throws none).
template <typename Call>
std::string ErrorOf(Call call) {
  try {
    call();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

TEST(LinearAttentionVarlenTest, BadOffsetsAreRejectedNamingThem) {
  const Packed p = MakePacked({3, 5}, 1, 2, 2, 6);  // T = 8
  auto gla = [&](const std::vector<int64_t>& cu) {
    return ErrorOf([&] { GlaChunkedVarlen(p.q, p.k, p.v, p.g_vec, 1.0, {}, cu, kChunk); });
  };
  auto gdn = [&](const std::vector<int64_t>& cu) {
    return ErrorOf(
        [&] { GatedDeltaChunkedVarlen(p.q, p.k, p.v, p.g_head, p.beta, 1.0, {}, cu, kChunk); });
  };
  for (const auto& check : {std::function<std::string(const std::vector<int64_t>&)>(gla),
                            std::function<std::string(const std::vector<int64_t>&)>(gdn)}) {
    EXPECT_EQ(check({0, 3, 8}), "");
    EXPECT_EQ(check({0, 0, 8, 8}), "") << "empty sequences are allowed";
    EXPECT_NE(check({}).find("cu_seqlens must hold N + 1 >= 2 offsets (got 0)"), std::string::npos);
    EXPECT_NE(check({0}).find("cu_seqlens must hold N + 1 >= 2 offsets (got 1)"),
              std::string::npos);
    EXPECT_NE(check({1, 3, 8}).find("cu_seqlens[0] must be 0 (got 1)"), std::string::npos);
    EXPECT_NE(check({0, 5, 3, 8}).find("cu_seqlens must not decrease (cu_seqlens[2] = 3"),
              std::string::npos);
    EXPECT_NE(check({0, 3, 7}).find("cu_seqlens[2] = 7 must equal the packed length T = 8"),
              std::string::npos);
    EXPECT_NE(check({0, 3, 9}).find("cu_seqlens[2] = 9 must equal the packed length T = 8"),
              std::string::npos);
  }
  // The offsets' count fixes N: states of another N are rejected by name.
  const std::string bad_state = ErrorOf([&] {
    GlaChunkedVarlen(p.q, p.k, p.v, p.g_vec, 1.0, p.s0, {0, 8}, kChunk);
  });
  EXPECT_NE(bad_state.find("initial_state must be [N, H, K, V] = [1, 1, 2, 2]"), std::string::npos)
      << bad_state;
  const std::string bad_grad = ErrorOf([&] {
    GlaChunkedVarlenBackwardReference(p.q, p.k, p.v, p.g_vec, 1.0, {}, p.v,
                                      at::zeros({3, 1, 2, 2}, p.v.options()), p.cu, kChunk);
  });
  EXPECT_NE(bad_grad.find("d_final_state must be [N, H, K, V]"), std::string::npos) << bad_grad;
  // Packed batches are one row.
  const std::string two_rows = ErrorOf([&] {
    GlaChunkedVarlen(at::cat({p.q, p.q}), at::cat({p.k, p.k}), at::cat({p.v, p.v}),
                     at::cat({p.g_vec, p.g_vec}), 1.0, {}, p.cu, kChunk);
  });
  EXPECT_NE(two_rows.find("batch 1 (got 2)"), std::string::npos) << two_rows;
}

}  // namespace
}  // namespace hyb::kernels
