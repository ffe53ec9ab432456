#include "hyb/kernels/linear_attention.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <utility>
#include <vector>

namespace hyb::kernels {
namespace {

struct Inputs {
  at::Tensor q, k, v, g_vec, g_head, beta, s0;
};

// Random inputs with realistic ranges: log decays in [-1.5, 0), beta in (0, 1), L2-normalised k
// for the delta rule (its contraction property needs ||k|| <= 1).
Inputs MakeInputs(int64_t b, int64_t h, int64_t t, int64_t dk, int64_t dv, at::ScalarType type,
                  uint64_t seed) {
  torch::manual_seed(seed);
  const auto o = at::TensorOptions().dtype(type);
  Inputs in;
  in.q = at::randn({b, h, t, dk}, o);
  in.k = at::randn({b, h, t, dk}, o);
  in.k = in.k / in.k.norm(2, -1, true);
  in.v = at::randn({b, h, t, dv}, o);
  in.g_vec = -1.5 * at::rand({b, h, t, dk}, o);
  in.g_head = -1.5 * at::rand({b, h, t}, o);
  in.beta = at::sigmoid(at::randn({b, h, t}, o));
  in.s0 = 0.5 * at::randn({b, h, dk, dv}, o);
  return in;
}

double MaxRel(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs().max() / (b.abs().max() + 1e-12)).item<double>();
}

TEST(LinearAttentionTest, HandComputedScalarRecurrences) {
  // K = V = 1, one batch, one head, two steps.
  const auto o = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor q = torch::tensor({2.0, 3.0}, o).view({1, 1, 2, 1});
  const at::Tensor k = torch::tensor({1.0, 1.0}, o).view({1, 1, 2, 1});
  const at::Tensor v = torch::tensor({4.0, -1.0}, o).view({1, 1, 2, 1});
  const double a2 = 0.5;
  // GLA: S1 = 4, o1 = 0.5*2*4 = 4; S2 = 0.5*4 + (-1) = 1, o2 = 0.5*3*1 = 1.5.
  const at::Tensor g = torch::tensor({0.0, std::log(a2)}, o).view({1, 1, 2, 1});
  auto gla = GlaRecurrent(q, k, v, g, 0.5, {});
  EXPECT_NEAR(gla.output[0][0][0][0].item<double>(), 4.0, 1e-12);
  EXPECT_NEAR(gla.output[0][0][1][0].item<double>(), 1.5, 1e-12);
  EXPECT_NEAR(gla.final_state.item<double>(), 1.0, 1e-12);
  // Delta rule with beta = (0.5, 0.25): S1 = 0.5*4 = 2; S2 = 0.5*(1-0.25)*2 + 0.25*(-1) = 0.5.
  const at::Tensor gh = torch::tensor({0.0, std::log(a2)}, o).view({1, 1, 2});
  const at::Tensor beta = torch::tensor({0.5, 0.25}, o).view({1, 1, 2});
  auto delta = GatedDeltaRecurrent(q, k, v, gh, beta, 1.0, {});
  EXPECT_NEAR(delta.output[0][0][0][0].item<double>(), 4.0, 1e-12);  // 2 * S1
  EXPECT_NEAR(delta.output[0][0][1][0].item<double>(), 1.5, 1e-12);  // 3 * S2
  auto chunked = GatedDeltaChunked(q, k, v, gh, beta, 1.0, {}, 2);
  EXPECT_NEAR(chunked.final_state.item<double>(), 0.5, 1e-12);
}

TEST(LinearAttentionTest, ChunkedEqualsRecurrentFp32) {
  for (int64_t t : {1, 7, 16, 37}) {
    for (int64_t chunk : {4, 8, 64}) {
      const Inputs in = MakeInputs(2, 3, t, 8, 6, at::kFloat, 100 + t);
      for (bool with_state : {false, true}) {
        const at::Tensor s0 = with_state ? in.s0 : at::Tensor();
        auto r = GlaRecurrent(in.q, in.k, in.v, in.g_vec, 0.35, s0);
        auto c = GlaChunked(in.q, in.k, in.v, in.g_vec, 0.35, s0, chunk);
        EXPECT_LT(MaxRel(c.output, r.output), 1e-5) << "GLA t=" << t << " chunk=" << chunk;
        EXPECT_LT(MaxRel(c.final_state, r.final_state), 1e-5) << "GLA state t=" << t;
        auto dr = GatedDeltaRecurrent(in.q, in.k, in.v, in.g_head, in.beta, 0.35, s0);
        auto dc = GatedDeltaChunked(in.q, in.k, in.v, in.g_head, in.beta, 0.35, s0, chunk);
        EXPECT_LT(MaxRel(dc.output, dr.output), 1e-5) << "delta t=" << t << " chunk=" << chunk;
        EXPECT_LT(MaxRel(dc.final_state, dr.final_state), 1e-5) << "delta state t=" << t;
      }
    }
  }
}

TEST(LinearAttentionTest, ChunkedHandlesStrongDecayWithoutOverflow) {
  // Log decays of -30 per step would overflow a factorised exp(-cumsum) formulation in fp32.
  Inputs in = MakeInputs(1, 2, 40, 4, 4, at::kFloat, 7);
  in.g_vec = at::full_like(in.g_vec, -30.0);
  in.g_head = at::full_like(in.g_head, -30.0);
  auto r = GlaRecurrent(in.q, in.k, in.v, in.g_vec, 1.0, in.s0);
  auto c = GlaChunked(in.q, in.k, in.v, in.g_vec, 1.0, in.s0, 16);
  EXPECT_TRUE(at::isfinite(c.output).all().item<bool>());
  EXPECT_LT(MaxRel(c.output, r.output), 1e-5);
  auto dr = GatedDeltaRecurrent(in.q, in.k, in.v, in.g_head, in.beta, 1.0, in.s0);
  auto dc = GatedDeltaChunked(in.q, in.k, in.v, in.g_head, in.beta, 1.0, in.s0, 16);
  EXPECT_TRUE(at::isfinite(dc.output).all().item<bool>());
  EXPECT_LT(MaxRel(dc.output, dr.output), 1e-5);
}

// Central finite differences of L = sum(out * R) against autograd, in double.
void CheckGradients(const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f,
                    std::vector<at::Tensor> inputs, const std::string& label) {
  for (auto& x : inputs) x = x.detach().clone().set_requires_grad(true);
  torch::manual_seed(99);
  const at::Tensor out = f(inputs);
  const at::Tensor r = at::randn_like(out);
  const at::Tensor loss = (out * r).sum();
  const auto grads = torch::autograd::grad({loss}, inputs);
  const double eps = 1e-6;
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < inputs.size(); ++i) {
    at::Tensor flat = inputs[i].view(-1);
    const at::Tensor g = grads[i].reshape(-1);
    for (int64_t j = 0; j < flat.numel(); ++j) {
      const double orig = flat[j].item<double>();
      flat[j] = orig + eps;
      const double up = (f(inputs) * r).sum().item<double>();
      flat[j] = orig - eps;
      const double down = (f(inputs) * r).sum().item<double>();
      flat[j] = orig;
      const double numeric = (up - down) / (2 * eps);
      EXPECT_NEAR(g[j].item<double>(), numeric, 1e-6 * (1 + std::abs(numeric)))
          << label << " input " << i << " element " << j;
    }
  }
}

TEST(LinearAttentionTest, ChunkedGradientsMatchFiniteDifferences) {
  const Inputs in = MakeInputs(1, 2, 5, 3, 2, at::kDouble, 5);
  CheckGradients(
      [](const std::vector<at::Tensor>& x) {
        return GlaChunked(x[0], x[1], x[2], x[3], 0.7, x[4], 2).output;
      },
      {in.q, in.k, in.v, in.g_vec, in.s0}, "GlaChunked");
  CheckGradients(
      [](const std::vector<at::Tensor>& x) {
        auto r = GatedDeltaChunked(x[0], x[1], x[2], x[3], x[4], 0.7, x[5], 2);
        return at::cat({r.output.flatten(), r.final_state.flatten()});
      },
      {in.q, in.k, in.v, in.g_head, in.beta, in.s0}, "GatedDeltaChunked");
}

TEST(LinearAttentionTest, ChunkedBackwardMatchesAutogradThroughRecurrence) {
  // L = sum(o * R) + sum(S_T * R_T): the chunk formulas of GlaChunkedBackwardReference against
  // autograd through the token-by-token recurrence, in fp64. T from 1 to past several chunks,
  // not multiples of the chunk; gates up to -40 per step (e^-40 per token, e^-2560 per chunk)
  // next to gates near 0 in other key dims.
  for (const int64_t t : {1, 5, 8, 13, 29}) {
    for (const bool with_state : {false, true}) {
      for (const bool with_final_grad : {false, true}) {
        for (const bool strong : {false, true}) {
          Inputs in = MakeInputs(2, 2, t, 5, 3, at::kDouble, 200 + t);
          if (strong) {
            // Per key dim: 0 .. -40 per token, and every other dim almost no decay.
            in.g_vec = -40.0 * at::rand_like(in.g_vec);
            in.g_vec.select(-1, 1).mul_(1e-3);
          }
          const int64_t chunk = 8;
          const double scale = 0.6;
          at::Tensor q = in.q.clone().set_requires_grad(true);
          at::Tensor k = in.k.clone().set_requires_grad(true);
          at::Tensor v = in.v.clone().set_requires_grad(true);
          at::Tensor g = in.g_vec.clone().set_requires_grad(true);
          at::Tensor s0 =
              (with_state ? in.s0 : at::zeros_like(in.s0)).clone().set_requires_grad(true);
          const auto r = GlaRecurrent(q, k, v, g, scale, s0);
          const at::Tensor d_o = at::randn_like(r.output);
          const at::Tensor d_s = with_final_grad ? at::randn_like(r.final_state) : at::Tensor();
          at::Tensor loss = (r.output * d_o).sum();
          if (with_final_grad) loss = loss + (r.final_state * d_s).sum();
          const auto want = torch::autograd::grad({loss}, {q, k, v, g, s0});
          const auto got =
              GlaChunkedBackwardReference(in.q, in.k, in.v, in.g_vec, scale,
                                          with_state ? in.s0 : at::Tensor(), d_o, d_s, chunk);
          SCOPED_TRACE(::testing::Message() << "t=" << t << " state=" << with_state
                                            << " dS_T=" << with_final_grad << " strong=" << strong);
          const std::vector<std::pair<const char*, double>> errs = {
              {"dq", MaxRel(got.dq, want[0])},
              {"dk", MaxRel(got.dk, want[1])},
              {"dv", MaxRel(got.dv, want[2])},
              // dg is exactly 0 when nothing decays (T = 1, no state): measured against the
              // size of the terms it sums, q dq.
              {"dg", ((got.dg - want[3]).abs().max() /
                      ((in.q * want[0]).abs().max() + want[3].abs().max()))
                         .item<double>()},
              {"ds0", MaxRel(got.d_initial_state, want[4])}};
          for (const auto& [name, err] : errs) {
            EXPECT_LT(err, 1e-10) << name;
          }
          EXPECT_TRUE(at::isfinite(got.dg).all().item<bool>());
        }
      }
    }
  }
}

TEST(LinearAttentionTest, ChunkedBackwardAgreesAcrossChunkSizes) {
  // The chunk length is an implementation detail: the same gradients for 1, 3, 16 and 64.
  const Inputs in = MakeInputs(1, 3, 37, 6, 4, at::kDouble, 21);
  const at::Tensor d_o = at::randn_like(in.v), d_s = at::randn_like(in.s0);
  const auto ref =
      GlaChunkedBackwardReference(in.q, in.k, in.v, in.g_vec, 0.4, in.s0, d_o, d_s, 64);
  for (const int64_t chunk : {1, 3, 16}) {
    const auto got =
        GlaChunkedBackwardReference(in.q, in.k, in.v, in.g_vec, 0.4, in.s0, d_o, d_s, chunk);
    EXPECT_LT(MaxRel(got.dq, ref.dq), 1e-12) << chunk;
    EXPECT_LT(MaxRel(got.dk, ref.dk), 1e-12) << chunk;
    EXPECT_LT(MaxRel(got.dv, ref.dv), 1e-12) << chunk;
    EXPECT_LT(MaxRel(got.dg, ref.dg), 1e-12) << chunk;
    EXPECT_LT(MaxRel(got.d_initial_state, ref.d_initial_state), 1e-12) << chunk;
  }
}

TEST(LinearAttentionTest, GatedDeltaChunkedBackwardMatchesAutograd) {
  // L = sum(o * R) + sum(S_T * R_T): the chunk formulas of GatedDeltaChunkedBackwardReference
  // against autograd through the chunked reference (another chunk length) and through the
  // token-by-token recurrence, in fp64. T from 1 to past several chunks, not multiples of the
  // chunk; log decays down to -20 per token next to decays near 0.
  for (const int64_t t : {1, 5, 8, 13, 29}) {
    for (const bool with_state : {false, true}) {
      for (const bool with_final_grad : {false, true}) {
        for (const bool strong : {false, true}) {
          Inputs in = MakeInputs(2, 2, t, 5, 3, at::kDouble, 300 + t);
          if (strong) {
            in.g_head = -20.0 * at::rand_like(in.g_head);
            in.g_head.select(1, 1).mul_(1e-3);
          }
          const int64_t chunk = 8;
          const double scale = 0.6;
          auto leaf = [](const at::Tensor& x) { return x.clone().set_requires_grad(true); };
          const at::Tensor q = leaf(in.q), k = leaf(in.k), v = leaf(in.v), g = leaf(in.g_head);
          const at::Tensor beta = leaf(in.beta);
          const at::Tensor s0 = leaf(with_state ? in.s0 : at::zeros_like(in.s0));
          const at::Tensor d_o = at::randn_like(in.v);
          const at::Tensor d_s = with_final_grad ? at::randn_like(in.s0) : at::Tensor();
          const auto got = GatedDeltaChunkedBackwardReference(
              in.q, in.k, in.v, in.g_head, in.beta, scale, with_state ? in.s0 : at::Tensor(), d_o,
              d_s, chunk);
          for (const bool recurrent : {false, true}) {
            const auto r = recurrent ? GatedDeltaRecurrent(q, k, v, g, beta, scale, s0)
                                     : GatedDeltaChunkedReference(q, k, v, g, beta, scale, s0, 3);
            at::Tensor loss = (r.output * d_o).sum();
            if (with_final_grad) loss = loss + (r.final_state * d_s).sum();
            const auto want = torch::autograd::grad({loss}, {q, k, v, g, beta, s0});
            SCOPED_TRACE(::testing::Message()
                         << "t=" << t << " state=" << with_state << " dS_T=" << with_final_grad
                         << " strong=" << strong << " recurrent=" << recurrent);
            // dg is exactly 0 when nothing decays (T = 1, no state): measured against the size
            // of the terms it sums, q dq.
            const double dg_scale =
                (in.q * want[0]).abs().max().item<double>() + want[3].abs().max().item<double>();
            const std::vector<std::pair<const char*, double>> errs = {
                {"dq", MaxRel(got.dq, want[0])},
                {"dk", MaxRel(got.dk, want[1])},
                {"dv", MaxRel(got.dv, want[2])},
                {"dg", (got.dg - want[3]).abs().max().item<double>() / dg_scale},
                {"dbeta", MaxRel(got.dbeta, want[4])},
                {"ds0", MaxRel(got.d_initial_state, want[5])}};
            for (const auto& [name, err] : errs) {
              EXPECT_LT(err, 1e-10) << name;
            }
          }
          EXPECT_TRUE(at::isfinite(got.dg).all().item<bool>());
        }
      }
    }
  }
}

TEST(LinearAttentionTest, GatedDeltaChunkedBackwardAgreesAcrossChunkSizes) {
  // The chunk length is an implementation detail: the same gradients for 1, 3, 16 and 64.
  const Inputs in = MakeInputs(1, 3, 37, 6, 4, at::kDouble, 31);
  const at::Tensor d_o = at::randn_like(in.v), d_s = at::randn_like(in.s0);
  const auto ref = GatedDeltaChunkedBackwardReference(in.q, in.k, in.v, in.g_head, in.beta, 0.4,
                                                      in.s0, d_o, d_s, 64);
  for (const int64_t chunk : {1, 3, 16}) {
    const auto got = GatedDeltaChunkedBackwardReference(in.q, in.k, in.v, in.g_head, in.beta, 0.4,
                                                        in.s0, d_o, d_s, chunk);
    EXPECT_LT(MaxRel(got.dq, ref.dq), 1e-12) << chunk;
    EXPECT_LT(MaxRel(got.dk, ref.dk), 1e-12) << chunk;
    EXPECT_LT(MaxRel(got.dv, ref.dv), 1e-12) << chunk;
    EXPECT_LT(MaxRel(got.dg, ref.dg), 1e-12) << chunk;
    EXPECT_LT(MaxRel(got.dbeta, ref.dbeta), 1e-12) << chunk;
    EXPECT_LT(MaxRel(got.d_initial_state, ref.d_initial_state), 1e-12) << chunk;
  }
  // No tokens: the initial state's gradient is the final state's.
  const auto empty = GatedDeltaChunkedBackwardReference(
      in.q.narrow(2, 0, 0), in.k.narrow(2, 0, 0), in.v.narrow(2, 0, 0), in.g_head.narrow(2, 0, 0),
      in.beta.narrow(2, 0, 0), 0.4, in.s0, d_o.narrow(2, 0, 0), d_s, 64);
  EXPECT_TRUE(at::equal(empty.d_initial_state, d_s));
  EXPECT_EQ(empty.dg.size(2), 0);
}

TEST(LinearAttentionTest, StepContinuesChunkedState) {
  // Prefill with the chunked form, then decode with single steps: equals the recurrence over all.
  const Inputs in = MakeInputs(1, 2, 12, 4, 3, at::kFloat, 8);
  auto all = GatedDeltaRecurrent(in.q, in.k, in.v, in.g_head, in.beta, 0.5, {});
  auto pre = GatedDeltaChunked(in.q.narrow(2, 0, 9), in.k.narrow(2, 0, 9), in.v.narrow(2, 0, 9),
                               in.g_head.narrow(2, 0, 9), in.beta.narrow(2, 0, 9), 0.5, {}, 4);
  at::Tensor s = pre.final_state;
  for (int64_t t = 9; t < 12; ++t) {
    auto step = GatedDeltaStep(in.q.select(2, t), in.k.select(2, t), in.v.select(2, t),
                               in.g_head.select(2, t), in.beta.select(2, t), 0.5, s);
    EXPECT_LT(MaxRel(step.output, all.output.select(2, t)), 1e-5) << t;
    s = step.final_state;
  }
  EXPECT_LT(MaxRel(s, all.final_state), 1e-5);
}

TEST(LinearAttentionTest, RejectsBadShapes) {
  const Inputs in = MakeInputs(1, 2, 4, 4, 3, at::kFloat, 9);
  EXPECT_THROW(GlaChunked(in.q, in.k, in.v, in.g_head, 1.0, {}, 2), c10::Error);
  EXPECT_THROW(GatedDeltaChunked(in.q, in.k, in.v, in.g_vec, in.beta, 1.0, {}, 2), c10::Error);
  EXPECT_THROW(GlaChunked(in.q, in.k, in.v, in.g_vec, 1.0, {}, 0), c10::Error);
}

}  // namespace
}  // namespace hyb::kernels
