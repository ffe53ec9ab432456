// LibTorch boundary of the chunk-parallel Gated DeltaNet kernels (gated_delta_fast*.cu): which
// inputs they take, shape/dtype/device checks, dtype conversions of the small operands, output
// and workspace allocation, current stream, and the autograd function; for fixed-length and
// packed (cu_seqlens) batches.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cuda_check.h"
#include "device_support.h"
#include "entry_util.h"
#include "gated_delta_fast_launch.h"
#include "hyb/kernels/cuda_gated_delta.h"

namespace hyb::kernels::cuda {
namespace {

// Packed sequences as the launchers take them (GatedDeltaFastVarlen): the host offsets' tables,
// copied to the device with one non-blocking copy from pinned memory (no synchronisation with
// the device; the caching host allocator keeps the pinned buffer until the copy is done).
struct Packing {
  int64_t num_seqs = 0;      // N
  at::Tensor table;          // int64 on the device: cu_seqlens, cu_chunks, chunk_seq
  GatedDeltaFastVarlen seqs;  // pointers into `table`
};

// `cu_seqlens` must have passed CheckCuSeqlens.
Packing MakePacking(const std::vector<int64_t>& cu_seqlens, const at::Device& device,
                    int64_t heads) {
  const GatedDeltaFastVarlenTables t = GatedDeltaFastVarlenTablesOf(cu_seqlens);
  Packing pk;
  pk.num_seqs = static_cast<int64_t>(cu_seqlens.size()) - 1;
  const int64_t cols = pk.num_seqs + 1, total = t.cu_chunks.back();
  at::Tensor host =
      at::empty({2 * cols + total}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.data_ptr<int64_t>();
  std::copy(cu_seqlens.begin(), cu_seqlens.end(), h);
  std::copy(t.cu_chunks.begin(), t.cu_chunks.end(), h + cols);
  std::copy(t.chunk_seq.begin(), t.chunk_seq.end(), h + 2 * cols);
  pk.table = host.to(at::TensorOptions().device(device).dtype(at::kLong), /*non_blocking=*/true);
  const int64_t* d = pk.table.data_ptr<int64_t>();
  pk.seqs.cu_seqlens = d;
  pk.seqs.cu_chunks = d + cols;
  pk.seqs.chunk_seq = d + 2 * cols;
  pk.seqs.heads = heads;
  pk.seqs.total_chunks = total;
  return pk;
}

// The forward's per-chunk intermediates (GatedDeltaFastWorkspace) as tensors, so that the
// autograd function can keep them for the backward.
// Packed (B = 1): the final state [N_seqs, H, K, V], N = total_chunks, Tp = 64 total_chunks.
struct ForwardTensors {
  at::Tensor output;        // [B, H, T, V] bf16
  at::Tensor final_state;   // [B, H, K, V] fp32
  at::Tensor w, u, v_new;   // [B, H, Tp, K | V] bf16
  at::Tensor b;             // [B, H, Tp] fp32
  at::Tensor chunk_states;  // [B, H, N, K, V] bf16
  at::Tensor tinv;          // [B, H, Tp, 64] bf16; undefined when not kept (forward only)
};

GatedDeltaFastWorkspace WorkspaceOf(const ForwardTensors& f) {
  GatedDeltaFastWorkspace ws;
  ws.w = f.w.data_ptr();
  ws.u = f.u.data_ptr();
  ws.v_new = f.v_new.data_ptr();
  ws.b = f.b.data_ptr<float>();
  ws.chunk_states = f.chunk_states.data_ptr();
  ws.tinv = f.tinv.defined() ? f.tinv.data_ptr() : nullptr;
  return ws;
}

// q, k, v contiguous bf16; g, beta contiguous fp32; s0 undefined or contiguous fp32. T > 0.
// `pk`: packed sequences (B = 1), or null. `for_backward`: keep every chunk's Tinv, which only
// the backward reads.
ForwardTensors Forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& g, const at::Tensor& beta, double scale,
                       const at::Tensor& s0, const Packing* pk, bool for_backward) {
  const int64_t b = q.size(0), h = q.size(1), t = q.size(2), dk = q.size(3), dv = v.size(3);
  const int64_t n = pk != nullptr ? pk->seqs.total_chunks
                                  : (t + kGatedDeltaFastChunk - 1) / kGatedDeltaFastChunk;
  const int64_t tp = n * kGatedDeltaFastChunk;
  const int64_t states = pk != nullptr ? pk->num_seqs : b;
  const auto bf = q.options(), f32 = q.options().dtype(at::kFloat);
  ForwardTensors f;
  f.output = at::empty({b, h, t, dv}, bf);
  f.final_state = at::empty({states, h, dk, dv}, f32);
  f.w = at::empty({b, h, tp, dk}, bf);
  f.u = at::empty({b, h, tp, dv}, bf);
  f.v_new = at::empty({b, h, tp, dv}, bf);
  f.b = at::empty({b, h, tp}, f32);
  f.chunk_states = at::empty({b, h, n, dk, dv}, bf);
  if (for_backward) f.tinv = at::empty({b, h, tp, kGatedDeltaFastChunk}, bf);
  GatedDeltaFastParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.g = g.data_ptr<float>();
  p.beta = beta.data_ptr<float>();
  p.initial_state = s0.defined() ? s0.data_ptr<float>() : nullptr;
  p.o = f.output.data_ptr();
  p.final_state = f.final_state.data_ptr<float>();
  p.ws = WorkspaceOf(f);
  p.batch_heads = states * h;
  p.tokens = t;
  p.key_dim = static_cast<int>(dk);
  p.value_dim = static_cast<int>(dv);
  p.scale = static_cast<float>(scale);
  p.num_sms = NumSms(q.device());
  if (pk != nullptr) p.varlen = pk->seqs;
  Check(LaunchGatedDeltaFast(p, c10::cuda::getCurrentCUDAStream().stream()),
        "cuda GatedDeltaChunkedFast");
  return f;
}

// `x` contiguous with a 16-byte aligned start (the kernels move 16-byte vectors): a copy when a
// contiguous view starts off alignment.
at::Tensor Aligned(const at::Tensor& x) {
  at::Tensor c = x.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

// Inputs as the kernels read them.
struct Inputs {
  at::Tensor q, k, v, g, beta, s0;
};

Inputs Prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& g, const at::Tensor& beta, const at::Tensor& initial_state) {
  Inputs in;
  in.q = Aligned(q);
  in.k = Aligned(k);
  in.v = Aligned(v);
  in.g = g.to(at::kFloat).contiguous();
  in.beta = beta.to(at::kFloat).contiguous();
  if (initial_state.defined()) in.s0 = initial_state.to(at::kFloat).contiguous();
  return in;
}

// The number of states: B, or N when packed.
int64_t NumStates(const Inputs& in, const Packing* pk) {
  return pk != nullptr ? pk->num_seqs : in.q.size(0);
}

// T = 0 (packed: every sequence empty): nothing to run; the final state is the initial one.
at::Tensor EmptyFinalState(const Inputs& in, const Packing* pk) {
  return in.s0.defined()
             ? in.s0.clone()
             : at::zeros({NumStates(in, pk), in.q.size(1), in.q.size(3), in.v.size(3)},
                         in.q.options().dtype(at::kFloat));
}

GatedDeltaChunkedGradients Backward(const Inputs& in, double scale, const ForwardTensors& f,
                                    const at::Tensor& d_output, const at::Tensor& d_final_state,
                                    const Packing* pk) {
  const int64_t b = in.q.size(0), h = in.q.size(1), t = in.q.size(2), dk = in.q.size(3),
                dv = in.v.size(3);
  const int64_t states = NumStates(in, pk);
  const auto f32 = in.q.options().dtype(at::kFloat);
  at::Tensor d_s1;
  if (d_final_state.defined()) {
    d_s1 = d_final_state.to(at::kFloat).contiguous();
    TORCH_CHECK(d_s1.sizes() == at::IntArrayRef({states, h, dk, dv}),
                "cuda GatedDeltaChunkedFast backward: d_final_state must be [B, H, K, V] ",
                "([N, H, K, V] packed)");
  }
  if (t == 0) {
    return {at::zeros_like(in.q, f32), at::zeros_like(in.k, f32), at::zeros_like(in.v, f32),
            at::zeros({b, h, 0}, f32),  at::zeros({b, h, 0}, f32),
            d_s1.defined() ? d_s1 : at::zeros({states, h, dk, dv}, f32)};
  }
  const at::Tensor d_o = d_output.defined() ? Aligned(d_output.to(at::kBFloat16))
                                            : at::zeros({b, h, t, dv}, in.q.options());
  TORCH_CHECK(d_o.sizes() == at::IntArrayRef({b, h, t, dv}),
              "cuda GatedDeltaChunkedFast backward: d_output must be [B, H, T, V]");
  const int64_t n = f.chunk_states.size(2), tp = f.b.size(2);
  const at::Tensor dv_local = at::empty({b, h, tp, dv}, in.q.options());
  const at::Tensor d_w = at::empty({b, h, tp, dv}, f32);
  const at::Tensor d_states = at::empty({b, h, n, dk, dv}, in.q.options());
  GatedDeltaChunkedGradients out{at::empty({b, h, t, dk}, f32), at::empty({b, h, t, dk}, f32),
                                 at::empty({b, h, t, dv}, f32), at::empty({b, h, t}, f32),
                                 at::empty({b, h, t}, f32),     at::empty({states, h, dk, dv}, f32)};
  GatedDeltaFastBackwardParams p;
  p.q = in.q.data_ptr();
  p.k = in.k.data_ptr();
  p.v = in.v.data_ptr();
  p.g = in.g.data_ptr<float>();
  p.beta = in.beta.data_ptr<float>();
  p.d_output = d_o.data_ptr();
  p.d_final_state = d_s1.defined() ? d_s1.data_ptr<float>() : nullptr;
  p.ws = WorkspaceOf(f);
  p.dv_local = dv_local.data_ptr();
  p.d_w = d_w.data_ptr<float>();
  p.d_chunk_states = d_states.data_ptr();
  p.dq = out.dq.data_ptr<float>();
  p.dk = out.dk.data_ptr<float>();
  p.dv = out.dv.data_ptr<float>();
  p.dg = out.dg.data_ptr<float>();
  p.dbeta = out.dbeta.data_ptr<float>();
  p.d_initial_state = out.d_initial_state.data_ptr<float>();
  p.batch_heads = states * h;
  p.tokens = t;
  p.key_dim = static_cast<int>(dk);
  p.value_dim = static_cast<int>(dv);
  p.scale = static_cast<float>(scale);
  p.num_sms = NumSms(in.q.device());
  if (pk != nullptr) p.varlen = pk->seqs;
  Check(LaunchGatedDeltaFastBackward(p, c10::cuda::getCurrentCUDAStream().stream()),
        "cuda GatedDeltaChunkedFast backward");
  return out;
}

// Checks of a call's inputs: fixed-length (`cu_seqlens` empty) or packed.
// `forward_only`: no backward will follow (K = V = 256 allowed).
void CheckSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& g, const at::Tensor& beta, const at::Tensor& initial_state,
                    const std::vector<int64_t>& cu_seqlens, const char* op,
                    bool forward_only = false) {
  if (cu_seqlens.empty()) {
    TORCH_CHECK(GatedDeltaChunkedFastSupported(q, k, v, g, beta, initial_state, forward_only), op,
                ": unsupported inputs");
    return;
  }
  CheckCuSeqlens(cu_seqlens, q.size(2), op);
  TORCH_CHECK(GatedDeltaChunkedFastVarlenSupported(q, k, v, g, beta, initial_state,
                                                   static_cast<int64_t>(cu_seqlens.size()) - 1,
                                                   forward_only),
              op, ": unsupported inputs");
}

// Autograd node: the forward keeps its per-chunk intermediates for the backward. `cu_seqlens`
// empty: a fixed-length batch; otherwise packed sequences.
class GatedDeltaFastFunction : public torch::autograd::Function<GatedDeltaFastFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const at::Tensor& g,
                                                const at::Tensor& beta,
                                                const at::Tensor& initial_state, double scale,
                                                const std::vector<int64_t>& cu_seqlens) {
    // An empty tensor stands for "no initial state" (see GatedDeltaChunkedFastWithGrad).
    const at::Tensor s0 = StateOrNone(initial_state);
    CheckSupported(q, k, v, g, beta, s0, cu_seqlens, "cuda GatedDeltaChunkedFast");
    const c10::cuda::CUDAGuard guard(q.device());
    const Inputs in = Prepare(q, k, v, g, beta, s0);
    Packing pk;
    if (!cu_seqlens.empty()) pk = MakePacking(cu_seqlens, q.device(), q.size(1));
    const Packing* packing = cu_seqlens.empty() ? nullptr : &pk;
    ctx->save_for_backward({in.q, in.k, in.v, in.g, in.beta});
    ctx->saved_data["cu_seqlens"] = cu_seqlens;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["g_type"] = static_cast<int64_t>(g.scalar_type());
    ctx->saved_data["beta_type"] = static_cast<int64_t>(beta.scalar_type());
    ctx->saved_data["state_type"] =
        s0.defined() ? static_cast<int64_t>(s0.scalar_type()) : int64_t{-1};
    if (in.q.size(2) == 0) {
      ctx->saved_data["empty"] = true;
      return {at::empty({q.size(0), q.size(1), 0, v.size(3)}, q.options()),
              EmptyFinalState(in, packing)};
    }
    ForwardTensors f =
        Forward(in.q, in.k, in.v, in.g, in.beta, scale, in.s0, packing, /*for_backward=*/true);
    ctx->saved_data["empty"] = false;
    ctx->saved_data["w"] = f.w;
    ctx->saved_data["u"] = f.u;
    ctx->saved_data["v_new"] = f.v_new;
    ctx->saved_data["b"] = f.b;
    ctx->saved_data["chunk_states"] = f.chunk_states;
    ctx->saved_data["tinv"] = f.tinv;
    return {f.output, f.final_state};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    Inputs in{saved[0], saved[1], saved[2], saved[3], saved[4], at::Tensor()};
    const c10::cuda::CUDAGuard guard(in.q.device());
    ForwardTensors f;
    if (!ctx->saved_data["empty"].toBool()) {
      f.w = ctx->saved_data["w"].toTensor();
      f.u = ctx->saved_data["u"].toTensor();
      f.v_new = ctx->saved_data["v_new"].toTensor();
      f.b = ctx->saved_data["b"].toTensor();
      f.chunk_states = ctx->saved_data["chunk_states"].toTensor();
      f.tinv = ctx->saved_data["tinv"].toTensor();
    }
    const std::vector<int64_t> cu_seqlens = ctx->saved_data["cu_seqlens"].toIntVector();
    Packing pk;
    if (!cu_seqlens.empty()) pk = MakePacking(cu_seqlens, in.q.device(), in.q.size(1));
    const GatedDeltaChunkedGradients d =
        Backward(in, ctx->saved_data["scale"].toDouble(), f, grad_outputs[0], grad_outputs[1],
                 cu_seqlens.empty() ? nullptr : &pk);
    const int64_t state_type = ctx->saved_data["state_type"].toInt();
    at::Tensor d_state;
    if (state_type >= 0) d_state = d.d_initial_state.to(static_cast<at::ScalarType>(state_type));
    return {d.dq.to(in.q.scalar_type()),  d.dk.to(in.k.scalar_type()), d.dv.to(in.v.scalar_type()),
            d.dg.to(static_cast<at::ScalarType>(ctx->saved_data["g_type"].toInt())),
            d.dbeta.to(static_cast<at::ScalarType>(ctx->saved_data["beta_type"].toInt())),
            d_state,
            at::Tensor(),
            at::Tensor()};
  }
};

LinearAttentionOutput ForwardOnly(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& g, const at::Tensor& beta, double scale,
                                  const at::Tensor& initial_state,
                                  const std::vector<int64_t>& cu_seqlens) {
  CheckSupported(q, k, v, g, beta, initial_state, cu_seqlens, "cuda GatedDeltaChunkedFast",
                 /*forward_only=*/true);
  const c10::cuda::CUDAGuard guard(q.device());
  const Inputs in = Prepare(q, k, v, g, beta, initial_state);
  Packing pk;
  if (!cu_seqlens.empty()) pk = MakePacking(cu_seqlens, q.device(), q.size(1));
  const Packing* packing = cu_seqlens.empty() ? nullptr : &pk;
  if (in.q.size(2) == 0) {
    return {at::empty({q.size(0), q.size(1), 0, v.size(3)}, q.options()),
            EmptyFinalState(in, packing)};
  }
  ForwardTensors f =
      Forward(in.q, in.k, in.v, in.g, in.beta, scale, in.s0, packing, /*for_backward=*/false);
  return {f.output, f.final_state};
}

LinearAttentionOutput ForwardWithGrad(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& g,
                                      const at::Tensor& beta, double scale,
                                      const at::Tensor& initial_state,
                                      const std::vector<int64_t>& cu_seqlens) {
  const at::Tensor s0 = StateInput(initial_state, q);
  const torch::autograd::variable_list out =
      GatedDeltaFastFunction::apply(q, k, v, g, beta, s0, scale, cu_seqlens);
  return {out[0], out[1]};
}

GatedDeltaChunkedGradients BackwardAlone(const at::Tensor& q, const at::Tensor& k,
                                         const at::Tensor& v, const at::Tensor& g,
                                         const at::Tensor& beta, double scale,
                                         const at::Tensor& initial_state,
                                         const at::Tensor& d_output,
                                         const at::Tensor& d_final_state,
                                         const std::vector<int64_t>& cu_seqlens) {
  CheckSupported(q, k, v, g, beta, initial_state, cu_seqlens,
                 "cuda GatedDeltaChunkedFast backward");
  at::NoGradGuard no_grad;
  const c10::cuda::CUDAGuard guard(q.device());
  const Inputs in = Prepare(q, k, v, g, beta, initial_state);
  Packing pk;
  if (!cu_seqlens.empty()) pk = MakePacking(cu_seqlens, q.device(), q.size(1));
  const Packing* packing = cu_seqlens.empty() ? nullptr : &pk;
  ForwardTensors f;
  if (in.q.size(2) > 0) {
    f = Forward(in.q, in.k, in.v, in.g, in.beta, scale, in.s0, packing, /*for_backward=*/true);
  }
  return Backward(in, scale, f, d_output, d_final_state, packing);
}

}  // namespace

bool GatedDeltaChunkedFastSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& g, const at::Tensor& beta,
                                    const at::Tensor& initial_state, bool forward_only) {
  if (!q.defined() || !q.is_cuda()) return false;
  if (!KernelsRunOnDevice(q.device().index(), kChunkedKernelSmem)) return false;
  const at::Device dev = q.device();
  if (!OnDevice(k, dev) || !OnDevice(v, dev) || !OnDevice(g, dev) || !OnDevice(beta, dev)) {
    return false;
  }
  if (q.scalar_type() != at::kBFloat16 || k.scalar_type() != at::kBFloat16 ||
      v.scalar_type() != at::kBFloat16 || !IsFloating(g) || !IsFloating(beta)) {
    return false;
  }
  if (q.dim() != 4 || k.sizes() != q.sizes() || v.dim() != 4) return false;
  if (v.size(0) != q.size(0) || v.size(1) != q.size(1) || v.size(2) != q.size(2)) return false;
  if (g.sizes() != q.sizes().slice(0, 3) || beta.sizes() != g.sizes()) return false;
  const int dk = static_cast<int>(q.size(3)), dv = static_cast<int>(v.size(3));
  if (!(forward_only ? GatedDeltaFastForwardSupportsDims(dk, dv)
                     : GatedDeltaFastSupportsDims(dk, dv))) {
    return false;
  }
  if (q.size(0) * q.size(1) > 65535) return false;
  if (initial_state.defined()) {
    if (!OnDevice(initial_state, dev) || !IsFloating(initial_state)) return false;
    if (initial_state.sizes() != at::IntArrayRef{q.size(0), q.size(1), q.size(3), v.size(3)}) {
      return false;
    }
  }
  return true;
}

LinearAttentionOutput GatedDeltaChunkedFast(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v, const at::Tensor& g,
                                            const at::Tensor& beta, double scale,
                                            const at::Tensor& initial_state) {
  return ForwardOnly(q, k, v, g, beta, scale, initial_state, {});
}

LinearAttentionOutput GatedDeltaChunkedFastWithGrad(const at::Tensor& q, const at::Tensor& k,
                                                    const at::Tensor& v, const at::Tensor& g,
                                                    const at::Tensor& beta, double scale,
                                                    const at::Tensor& initial_state) {
  return ForwardWithGrad(q, k, v, g, beta, scale, initial_state, {});
}

GatedDeltaChunkedGradients GatedDeltaChunkedFastBackward(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v, const at::Tensor& g,
                                                         const at::Tensor& beta, double scale,
                                                         const at::Tensor& initial_state,
                                                         const at::Tensor& d_output,
                                                         const at::Tensor& d_final_state) {
  return BackwardAlone(q, k, v, g, beta, scale, initial_state, d_output, d_final_state, {});
}

bool GatedDeltaChunkedFastVarlenSupported(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& g,
                                          const at::Tensor& beta, const at::Tensor& initial_state,
                                          int64_t num_seqs, bool forward_only) {
  if (!GatedDeltaChunkedFastSupported(q, k, v, g, beta, at::Tensor(), forward_only) ||
      q.size(0) != 1 ||
      num_seqs < 1 || num_seqs * q.size(1) > 65535) {
    return false;
  }
  if (!initial_state.defined()) return true;
  return OnDevice(initial_state, q.device()) && IsFloating(initial_state) &&
         initial_state.sizes() == at::IntArrayRef{num_seqs, q.size(1), q.size(3), v.size(3)};
}

LinearAttentionOutput GatedDeltaChunkedFastVarlen(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, const at::Tensor& g,
                                                  const at::Tensor& beta, double scale,
                                                  const at::Tensor& initial_state,
                                                  const std::vector<int64_t>& cu_seqlens) {
  CheckCuSeqlens(cu_seqlens, q.size(2), "cuda GatedDeltaChunkedFastVarlen");
  return ForwardOnly(q, k, v, g, beta, scale, initial_state, cu_seqlens);
}

LinearAttentionOutput GatedDeltaChunkedFastVarlenWithGrad(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& v, const at::Tensor& g,
                                                          const at::Tensor& beta, double scale,
                                                          const at::Tensor& initial_state,
                                                          const std::vector<int64_t>& cu_seqlens) {
  CheckCuSeqlens(cu_seqlens, q.size(2), "cuda GatedDeltaChunkedFastVarlen");
  return ForwardWithGrad(q, k, v, g, beta, scale, initial_state, cu_seqlens);
}

GatedDeltaChunkedGradients GatedDeltaChunkedFastVarlenBackward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
    const at::Tensor& beta, double scale, const at::Tensor& initial_state,
    const at::Tensor& d_output, const at::Tensor& d_final_state,
    const std::vector<int64_t>& cu_seqlens) {
  CheckCuSeqlens(cu_seqlens, q.size(2), "cuda GatedDeltaChunkedFastVarlen backward");
  return BackwardAlone(q, k, v, g, beta, scale, initial_state, d_output, d_final_state,
                       cu_seqlens);
}

}  // namespace hyb::kernels::cuda
