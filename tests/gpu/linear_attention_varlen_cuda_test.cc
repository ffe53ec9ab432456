// GPU tests of packed variable-length batches (cu_seqlens) through the chunked GLA and Gated
// DeltaNet CUDA kernels (ctest label `gpu`): outputs, final states and every gradient of one
// packed launch equal separate runs of each sequence through the fixed-length dispatch point
// (tight bounds: the same kernels, only GLA's segmentation of long sequences may differ; gated
// delta runs the chunk-parallel kernels both ways), and the fp64 ATen reference within the
// relative-to-bf16 tolerance of linear_attention_cuda_test.cc and gated_delta_cuda_test.cc
// (error below 1e-2 and below twice the bf16 reference's own error).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_util.h"
#include "hyb/kernels/cuda_ops.h"
#include "hyb/kernels/linear_attention.h"
#ifdef HYB_WITH_CUDA
#include "linear_attention_launch.h"
#endif

namespace hyb {
namespace {

#ifdef HYB_WITH_CUDA

std::vector<int64_t> Offsets(const std::vector<int64_t>& lengths) {
  std::vector<int64_t> cu = {0};
  for (const int64_t len : lengths) cu.push_back(cu.back() + len);
  return cu;
}

// Sequence i's tokens of a [1, H, T, ...] tensor, and its [1, H, K, V] slice of a state.
at::Tensor Seq(const at::Tensor& x, const std::vector<int64_t>& cu, size_t i) {
  return x.narrow(2, cu[i], cu[i + 1] - cu[i]);
}
at::Tensor State(const at::Tensor& s, size_t i) {
  return s.defined() ? s.narrow(0, static_cast<int64_t>(i), 1) : s;
}

at::Tensor Leaf(const at::Tensor& x, at::ScalarType type) {
  return x.to(type).detach().clone().requires_grad_(true);
}

// One packed batch: inputs as the mixers make them (keys L2-normalised; GLA gates
// logsigmoid(x) / 16; gated-delta decays uniform in [-1, 0] and betas sigmoid(x), rounded to bf16
// values kept in fp32 so that the bf16 reference reads what the kernel reads), the upstream
// gradients, and an initial state per sequence (or none).
struct Batch {
  std::vector<int64_t> cu;
  at::Tensor q, k, v;  // [1, H, T, .] bf16
  at::Tensor g;        // GLA [1, H, T, K], gated delta [1, H, T]; fp32
  at::Tensor beta;     // gated delta: [1, H, T] fp32
  at::Tensor s0;       // [N, H, K, V] fp32 or undefined
  at::Tensor d_o;      // [1, H, T, V] bf16
  at::Tensor d_s;      // [N, H, K, V] fp32 or undefined
  int64_t num_seqs() const { return static_cast<int64_t>(cu.size()) - 1; }
};

Batch MakeBatch(bool gla, const std::vector<int64_t>& lengths, int64_t h, int64_t dk, int64_t dv,
                bool with_state, bool with_final_grad) {
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  Batch b;
  b.cu = Offsets(lengths);
  const int64_t t = b.cu.back(), n = b.num_seqs();
  b.q = at::randn({1, h, t, dk}, f32).to(at::kBFloat16);
  const at::Tensor k = at::randn({1, h, t, dk}, f32);
  b.k = (k / k.norm(2, -1, true)).to(at::kBFloat16);
  b.v = at::randn({1, h, t, dv}, f32).to(at::kBFloat16);
  if (gla) {
    b.g = at::log_sigmoid(at::randn({1, h, t, dk}, f32)) / 16;
  } else {
    b.g = (-at::rand({1, h, t}, f32)).to(at::kBFloat16).to(at::kFloat);
    b.beta = at::sigmoid(at::randn({1, h, t}, f32)).to(at::kBFloat16).to(at::kFloat);
  }
  if (with_state) b.s0 = at::randn({n, h, dk, dv}, f32);
  b.d_o = at::randn({1, h, t, dv}, f32).to(at::kBFloat16);
  if (with_final_grad) b.d_s = at::randn({n, h, dk, dv}, f32);
  return b;
}

// Output, final states and gradients (of sum(o * d_o) + sum(S_T * d_s)) of one computation.
struct Result {
  at::Tensor o, s1;
  at::Tensor dq, dk, dv, dg, dbeta, ds0;  // dbeta: gated delta only
};

// Runs `forward` on leaves of the batch's inputs (q, k, v in `type`; g, beta and the state in
// `gate_type`) and back-propagates the batch's upstream gradients. With `zero_state_leaf` and no
// initial state, the state is a leaf of zeros and ds0 the gradient for a zero state.
template <typename Forward>
Result RunWithGrads(const Batch& b, at::ScalarType type, at::ScalarType gate_type,
                    bool zero_state_leaf, Forward forward) {
  const at::Tensor q = Leaf(b.q, type), k = Leaf(b.k, type), v = Leaf(b.v, type);
  const at::Tensor g = Leaf(b.g, gate_type);
  const at::Tensor beta = b.beta.defined() ? Leaf(b.beta, gate_type) : at::Tensor();
  at::Tensor s0;
  if (b.s0.defined()) {
    s0 = Leaf(b.s0, gate_type);
  } else if (zero_state_leaf) {
    s0 = at::zeros({b.num_seqs(), b.q.size(1), b.q.size(3), b.v.size(3)},
                   b.v.options().dtype(gate_type))
             .requires_grad_(true);
  }
  const kernels::LinearAttentionOutput r = forward(q, k, v, g, beta, s0);
  std::vector<at::Tensor> outs = {r.output}, grads = {b.d_o.to(r.output.scalar_type())};
  if (b.d_s.defined()) {
    outs.push_back(r.final_state);
    grads.push_back(b.d_s.to(r.final_state.scalar_type()));
  }
  std::vector<at::Tensor> inputs = {q, k, v, g};
  if (beta.defined()) inputs.push_back(beta);
  if (s0.defined()) inputs.push_back(s0);
  const auto d = torch::autograd::grad(outs, inputs, grads, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true);
  Result res{r.output.detach(), r.final_state.detach(), d[0], d[1], d[2], d[3]};
  size_t next = 4;
  if (beta.defined()) res.dbeta = d[next++];
  if (s0.defined()) res.ds0 = d[next];
  return res;
}

// The packed batch through the dispatch point (one launch per kernel on CUDA).
Result Packed(const Batch& b, bool gla, double scale) {
  return RunWithGrads(
      b, at::kBFloat16, at::kFloat, /*zero_state_leaf=*/false,
      [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
          const at::Tensor& beta, const at::Tensor& s0) {
        auto r = gla ? kernels::GlaChunkedVarlen(q, k, v, g, scale, s0, b.cu, 64)
                     : kernels::GatedDeltaChunkedVarlen(q, k, v, g, beta, scale, s0, b.cu, 64);
        EXPECT_EQ(r.final_state.scalar_type(), at::kFloat) << "the CUDA kernel did not run";
        return r;
      });
}

// Every sequence alone through the fixed-length dispatch point (the product path: the CUDA
// kernels the packed batch runs, for gated delta the chunk-parallel ones where they apply), the
// results packed back together.
// An empty sequence's final state is its initial one and its initial state's gradient its final
// state's (zeros when undefined).
Result Separate(const Batch& b, bool gla, double scale) {
  std::vector<at::Tensor> o, s1, dq, dk, dv, dg, dbeta, ds0;
  const int64_t h = b.q.size(1), dkk = b.q.size(3), dvv = b.v.size(3);
  const auto f32 = b.v.options().dtype(at::kFloat);
  for (size_t i = 0; i + 1 < b.cu.size(); ++i) {
    if (b.cu[i + 1] == b.cu[i]) {
      s1.push_back(b.s0.defined() ? State(b.s0, i) : at::zeros({1, h, dkk, dvv}, f32));
      ds0.push_back(b.d_s.defined() ? State(b.d_s, i) : at::zeros({1, h, dkk, dvv}, f32));
      continue;
    }
    Batch one;
    one.cu = {0, b.cu[i + 1] - b.cu[i]};
    one.q = Seq(b.q, b.cu, i);
    one.k = Seq(b.k, b.cu, i);
    one.v = Seq(b.v, b.cu, i);
    one.g = Seq(b.g, b.cu, i);
    if (b.beta.defined()) one.beta = Seq(b.beta, b.cu, i);
    one.s0 = State(b.s0, i);
    one.d_o = Seq(b.d_o, b.cu, i);
    one.d_s = State(b.d_s, i);
    const Result r = RunWithGrads(
        one, at::kBFloat16, at::kFloat, /*zero_state_leaf=*/true,
        [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
            const at::Tensor& beta, const at::Tensor& s0) {
          auto out = gla ? kernels::GlaChunked(q, k, v, g, scale, s0, 64)
                         : kernels::GatedDeltaChunked(q, k, v, g, beta, scale, s0, 64);
          EXPECT_EQ(out.final_state.scalar_type(), at::kFloat) << "the CUDA kernel did not run";
          return out;
        });
    o.push_back(r.o);
    s1.push_back(r.s1);
    dq.push_back(r.dq);
    dk.push_back(r.dk);
    dv.push_back(r.dv);
    dg.push_back(r.dg);
    if (r.dbeta.defined()) dbeta.push_back(r.dbeta);
    ds0.push_back(r.ds0);
  }
  Result res{at::cat(o, 2),  at::cat(s1, 0), at::cat(dq, 2), at::cat(dk, 2),
             at::cat(dv, 2), at::cat(dg, 2), at::Tensor(),   at::cat(ds0, 0)};
  if (!dbeta.empty()) res.dbeta = at::cat(dbeta, 2);
  return res;
}

// The ATen reference (per sequence) under autograd: in fp64 (the oracle) or bf16 (the error a
// bf16 implementation makes; for gated delta through the token-by-token recurrence, since the
// chunked form's triangular solve has no bf16). ds0 always defined (a zero-state leaf).
Result Reference(const Batch& b, bool gla, double scale, bool bf16) {
  const at::ScalarType type = bf16 ? at::kBFloat16 : at::kDouble;
  return RunWithGrads(
      b, type, type, /*zero_state_leaf=*/true,
      [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
          const at::Tensor& beta, const at::Tensor& s0) -> kernels::LinearAttentionOutput {
        if (gla) return kernels::GlaChunkedVarlenReference(q, k, v, g, scale, s0, b.cu, 64);
        if (!bf16) {
          return kernels::GatedDeltaChunkedVarlenReference(q, k, v, g, beta, scale, s0, b.cu, 64);
        }
        std::vector<at::Tensor> outs, finals;
        for (size_t i = 0; i + 1 < b.cu.size(); ++i) {
          if (b.cu[i + 1] == b.cu[i]) {  // the recurrence needs a token
            outs.push_back(Seq(v, b.cu, i) * 0);
            finals.push_back(State(s0, i));
            continue;
          }
          const auto r = kernels::GatedDeltaRecurrent(Seq(q, b.cu, i), Seq(k, b.cu, i),
                                                      Seq(v, b.cu, i), Seq(g, b.cu, i),
                                                      Seq(beta, b.cu, i), scale, State(s0, i));
          outs.push_back(r.output);
          finals.push_back(r.final_state);
        }
        return {at::cat(outs, 2), at::cat(finals, 0)};
      });
}

std::vector<std::tuple<const char*, at::Tensor, at::Tensor>> Parts(const Result& a,
                                                                   const Result& b) {
  std::vector<std::tuple<const char*, at::Tensor, at::Tensor>> parts = {
      {"o", a.o, b.o},    {"S_T", a.s1, b.s1}, {"dq", a.dq, b.dq},   {"dk", a.dk, b.dk},
      {"dv", a.dv, b.dv}, {"dg", a.dg, b.dg},  {"ds0", a.ds0, b.ds0}};
  if (a.dbeta.defined()) parts.emplace_back("dbeta", a.dbeta, b.dbeta);
  return parts;
}

// The packed run against separate runs (bound `tight`) and against the fp64 reference (below
// 1e-2 and below twice the bf16 reference's error); prints every error.
void ExpectPackedMatches(const Batch& b, bool gla, double scale, double tight,
                         const std::string& label) {
  PoisonAllocator(b.q.size(1) * b.q.size(2) * (3 * b.q.size(3) + 2 * b.v.size(3)) * 4);
  const Result got = Packed(b, gla, scale);
  const Result alone = Separate(b, gla, scale);
  const Result ref = Reference(b, gla, scale, /*bf16=*/false);
  const Result ref_bf16 = Reference(b, gla, scale, /*bf16=*/true);
  ASSERT_TRUE(got.ds0.defined() == b.s0.defined());
  Result got_full = got;
  if (!got_full.ds0.defined()) got_full.ds0 = alone.ds0;  // no state leaf: compared below only
  std::cout << (gla ? "[gla varlen] " : "[gdn varlen] ") << label;
  const auto vs_alone = Parts(got_full, alone);
  const auto vs_ref = Parts(got_full, ref);
  const auto vs_bf16 = Parts(ref_bf16, ref);
  for (size_t i = 0; i < vs_alone.size(); ++i) {
    const auto& [name, x, sep] = vs_alone[i];
    if (std::string(name) == "ds0" && !b.s0.defined()) continue;
    const double err_sep = RelErr(x, sep);
    const double err = RelErr(x, std::get<2>(vs_ref[i]));
    const double err_bf16 = RelErr(std::get<1>(vs_bf16[i]), std::get<2>(vs_bf16[i]));
    std::cout << " " << name << " sep " << err_sep << " ref " << err << " (bf16 ref " << err_bf16
              << ")";
    EXPECT_TRUE(at::isfinite(x).all().item<bool>()) << label << " " << name;
    EXPECT_LE(err_sep, tight) << label << " " << name;
    EXPECT_LT(err, 1e-2) << label << " " << name;
    EXPECT_LT(err, 2 * err_bf16) << label << " " << name;
  }
  std::cout << "\n";
}

// Length-0 and length-1 sequences, lengths around the chunk (63, 64, 65), and 5,000 tokens (79
// chunks) beside them: with few heads GLA's forward cuts that sequence into segments (the
// multi-segment path). One packed launch per kernel; each case with and without initial states
// and final-state gradients. GLA's tight bound leaves room for a different segmentation of the
// long sequence (fp32 summation order, then bf16 roundings of outputs and gradients); the gated
// delta kernels (chunk-parallel, K = V) do the same arithmetic packed or alone (the same
// floating-point instruction stream in both instances; the host emulation finds them bitwise
// equal), and their bound leaves room only for bf16 roundings that a last-bit fp32 difference
// flips (of the bf16 intermediates, and of the q, k, v gradients returned in bf16).
const std::vector<std::vector<int64_t>> kLengthSets = {{1, 63, 0, 64, 65, 1000, 5000},
                                                       {0, 1, 130, 0, 2500, 1}};

TEST(CudaVarlenTest, GlaEqualsSeparateRunsAndReference) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(61);
  for (const int64_t d : {64, 128}) {
    for (size_t set = 0; set < kLengthSets.size(); ++set) {
      const bool with_state = set == 0, with_final_grad = set == 0 || d == 64;
      const Batch b =
          MakeBatch(/*gla=*/true, kLengthSets[set], 2, d, d, with_state, with_final_grad);
      std::ostringstream label;
      label << "K=V=" << d << " set=" << set << " state=" << with_state
            << " dS_T=" << with_final_grad;
      ExpectPackedMatches(b, /*gla=*/true, 1.0 / std::sqrt(static_cast<double>(d)), 2e-3,
                          label.str());
    }
  }
}

TEST(CudaVarlenTest, GatedDeltaEqualsSeparateRunsAndReference) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(62);
  for (const int64_t d : {64, 128}) {
    for (size_t set = 0; set < kLengthSets.size(); ++set) {
      const bool with_state = set == 0, with_final_grad = set == 0 || d == 64;
      const Batch b =
          MakeBatch(/*gla=*/false, kLengthSets[set], 2, d, d, with_state, with_final_grad);
      std::ostringstream label;
      label << "K=V=" << d << " set=" << set << " state=" << with_state
            << " dS_T=" << with_final_grad;
      ExpectPackedMatches(b, /*gla=*/false, 1.0 / std::sqrt(static_cast<double>(d)), 5e-4,
                          label.str());
    }
  }
}

// Head dims of 256 (K, V or both; the sequential kernels, which keep slices of the value
// columns): packed sequences of 0, 1, 130 and 65 tokens against separate runs and the reference.
TEST(CudaVarlenTest, GatedDeltaHeadDims256) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(64);
  for (const auto& [dk, dv] :
       std::vector<std::pair<int64_t, int64_t>>{{256, 256}, {64, 256}, {256, 128}}) {
    const Batch b = MakeBatch(/*gla=*/false, {0, 1, 130, 65}, 2, dk, dv, /*with_state=*/true,
                              /*with_final_grad=*/true);
    std::ostringstream label;
    label << "K=" << dk << " V=" << dv;
    ExpectPackedMatches(b, /*gla=*/false, 1.0 / std::sqrt(static_cast<double>(dk)), 5e-4,
                        label.str());
  }
}

// More (sequence, head) pairs than multiprocessors: GLA runs one segment per sequence and its
// reverse scan keeps all state columns per block; gated delta one block per pair.
TEST(CudaVarlenTest, ManySequencesFillTheDevice) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(63);
  std::vector<int64_t> lengths;
  for (int64_t i = 0; i < 70; ++i) lengths.push_back((i * 37) % 200);  // 0 .. 199, some empty
  for (const bool gla : {true, false}) {
    const Batch b = MakeBatch(gla, lengths, 2, 64, 64, /*with_state=*/true,
                              /*with_final_grad=*/true);
    ExpectPackedMatches(b, gla, 0.125, gla ? 2e-3 : 5e-4, "70 sequences H=2 K=V=64");
  }
}

// The host tables the launchers size their grids from (no device needed).
TEST(CudaVarlenTest, HostTablesOfChunksAndSegments) {
  using kernels::cuda::GlaVarlenSegmentChunks;
  using kernels::cuda::GlaVarlenSegments;
  using kernels::cuda::VarlenChunks;
  const std::vector<int64_t> chunks = VarlenChunks(Offsets({1, 63, 0, 64, 65, 1000, 5000}));
  EXPECT_EQ(chunks, (std::vector<int64_t>{0, 1, 2, 2, 3, 5, 21, 100}));
  // 2 heads on 132 multiprocessors: 200 (chunk, head) pairs, segments of 4 chunks (at least one
  // per sequence, the empty one included): the 5,000 tokens in 20 of them.
  EXPECT_EQ(GlaVarlenSegmentChunks(2, chunks, 132), 4);
  EXPECT_EQ(GlaVarlenSegments(chunks, 4), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 9, 29}));
  // Sequences that fill the device run whole: 1,000 x 64 tokens, 16 heads.
  const std::vector<int64_t> many = VarlenChunks(Offsets(std::vector<int64_t>(1000, 64)));
  EXPECT_EQ(many.back(), 1000);
  EXPECT_EQ(GlaVarlenSegmentChunks(16, many, 132), 1);
  // A long sequence among short ones is cut: 127 x 64 tokens and one of 65,536, 16 heads.
  std::vector<int64_t> mixed(127, 64);
  mixed.push_back(65536);
  const std::vector<int64_t> mixed_chunks = VarlenChunks(Offsets(mixed));
  EXPECT_EQ(GlaVarlenSegmentChunks(16, mixed_chunks, 132), 35);  // ceil(16 * 1151 / 528)
  // 80,000 (sequence, head) pairs of 10 chunks: a segment per sequence (the longest's length).
  const std::vector<int64_t> huge = VarlenChunks(Offsets(std::vector<int64_t>(5000, 640)));
  EXPECT_EQ(GlaVarlenSegmentChunks(16, huge, 132), 10);
  EXPECT_EQ(VarlenChunks({0, 0}), (std::vector<int64_t>{0, 0}));
}

// Forward-only calls (no gradient needed) give what the autograd path gives, and the CUDA entry
// points reject bad offsets with the same errors as the dispatch point. K = 128, V = 64: gated
// delta dispatches to the sequential kernels (the chunk-parallel ones need K = V; their
// forward-only and autograd calls are compared in gated_delta_fast_cuda_test.cc).
TEST(CudaVarlenTest, ForwardOnlyEqualsAutogradForwardAndBadOffsetsThrow) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(64);
  for (const bool gla : {true, false}) {
    const Batch b = MakeBatch(gla, {3, 0, 200, 64}, 2, 128, 64, true, true);
    const Result with_grad = Packed(b, gla, 0.1);
    const kernels::LinearAttentionOutput plain =
        gla ? kernels::cuda::GlaChunkedVarlen(b.q, b.k, b.v, b.g, 0.1, b.s0, b.cu)
            : kernels::cuda::GatedDeltaChunkedVarlen(b.q, b.k, b.v, b.g, b.beta, 0.1, b.s0, b.cu);
    EXPECT_TRUE(at::equal(plain.output, with_grad.o)) << gla;
    EXPECT_TRUE(at::equal(plain.final_state, with_grad.s1)) << gla;
    auto throws_naming = [&](const std::vector<int64_t>& cu, const std::string& what) {
      try {
        if (gla) {
          kernels::cuda::GlaChunkedVarlen(b.q, b.k, b.v, b.g, 0.1, {}, cu);
        } else {
          kernels::cuda::GatedDeltaChunkedVarlen(b.q, b.k, b.v, b.g, b.beta, 0.1, {}, cu);
        }
      } catch (const c10::Error& e) {
        EXPECT_NE(std::string(e.what_without_backtrace()).find(what), std::string::npos)
            << e.what_without_backtrace();
        return;
      }
      ADD_FAILURE() << "no error for " << what;
    };
    throws_naming({1, 3, 3, 203, 267}, "cu_seqlens[0] must be 0");
    throws_naming({0, 3, 2, 203, 267}, "cu_seqlens must not decrease");
    throws_naming({0, 3, 3, 203, 266}, "must equal the packed length T = 267");
  }
}

#else  // HYB_WITH_CUDA

// The kernels (kernels/cuda/) exist only in a -DHYB_CUDA=ON build.
TEST(CudaVarlenTest, NeedsTheCudaBuild) { GTEST_SKIP() << "built without HYB_CUDA"; }

#endif  // HYB_WITH_CUDA

}  // namespace
}  // namespace hyb
