// LibTorch boundary of the linear-attention kernels: which inputs they take, shape/dtype/device
// checks, dtype conversions of the small operands, output allocation, current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <array>
#include <vector>

#include "cuda_check.h"
#include "device_support.h"
#include "entry_util.h"
#include "hyb/kernels/cuda_ops.h"
#include "linear_attention_launch.h"

namespace hyb::kernels::cuda {
namespace {

// Packed sequences as the launchers take them: the host offsets (for grid sizes) and their device
// copy, made with one non-blocking copy from pinned memory (no synchronisation with the device).
struct VarlenPlan {
  int64_t num_seqs = 0;
  std::vector<int64_t> cu_chunks;    // host, VarlenChunks
  std::vector<int64_t> cu_segments;  // host, GLA forward only (GlaVarlenSegments)
  int segment_chunks = 0;            // GLA forward only
  at::Tensor table;                  // int64 [2 or 3, N + 1] on the device: the rows above
  VarlenSeqs seqs;                   // cu_seqlens and cu_chunks in `table`
  const int64_t* cu_segments_device = nullptr;
};

// `num_sms` > 0 adds GLA's forward segments for `heads` heads on a device with that many
// multiprocessors. `cu_seqlens` must have passed CheckCuSeqlens.
VarlenPlan MakeVarlenPlan(const std::vector<int64_t>& cu_seqlens, const at::Device& device,
                          int64_t heads, int num_sms) {
  VarlenPlan plan;
  plan.num_seqs = static_cast<int64_t>(cu_seqlens.size()) - 1;
  plan.cu_chunks = VarlenChunks(cu_seqlens);
  if (num_sms > 0) {
    plan.segment_chunks = GlaVarlenSegmentChunks(heads, plan.cu_chunks, num_sms);
    plan.cu_segments = GlaVarlenSegments(plan.cu_chunks, plan.segment_chunks);
  }
  const int64_t cols = plan.num_seqs + 1, rows = plan.cu_segments.empty() ? 2 : 3;
  at::Tensor host =
      at::empty({rows, cols}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.data_ptr<int64_t>();
  std::copy(cu_seqlens.begin(), cu_seqlens.end(), h);
  std::copy(plan.cu_chunks.begin(), plan.cu_chunks.end(), h + cols);
  std::copy(plan.cu_segments.begin(), plan.cu_segments.end(), h + 2 * cols);
  plan.table = host.to(at::TensorOptions().device(device).dtype(at::kLong), /*non_blocking=*/true);
  const int64_t* d = plan.table.data_ptr<int64_t>();
  plan.seqs.cu_seqlens = d;
  plan.seqs.cu_chunks = d + cols;
  plan.seqs.total_chunks = plan.cu_chunks.back();
  if (rows == 3) plan.cu_segments_device = d + 2 * cols;
  return plan;
}

// True when `initial_state` is undefined or a float [n, H, K, V] on q's device.
bool StateSupported(const at::Tensor& initial_state, const at::Tensor& q, const at::Tensor& v,
                    int64_t n) {
  if (!initial_state.defined()) return true;
  return OnDevice(initial_state, q.device()) && IsFloating(initial_state) &&
         initial_state.sizes() == at::IntArrayRef{n, q.size(1), q.size(3), v.size(3)};
}

}  // namespace

bool GlaChunkedSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& g, const at::Tensor& initial_state) {
  if (!q.defined() || !q.is_cuda()) return false;
  if (!KernelsRunOnDevice(q.device().index(), kChunkedKernelSmem)) return false;
  const at::Device dev = q.device();
  if (!OnDevice(k, dev) || !OnDevice(v, dev) || !OnDevice(g, dev)) return false;
  if (q.scalar_type() != at::kBFloat16 || k.scalar_type() != at::kBFloat16 ||
      v.scalar_type() != at::kBFloat16 || !IsFloating(g)) {
    return false;
  }
  if (q.dim() != 4 || k.sizes() != q.sizes() || g.sizes() != q.sizes() || v.dim() != 4)
    return false;
  if (v.size(0) != q.size(0) || v.size(1) != q.size(1) || v.size(2) != q.size(2)) return false;
  if (!GlaChunkedSupportsDims(static_cast<int>(q.size(3)), static_cast<int>(v.size(3)))) {
    return false;
  }
  if (initial_state.defined()) {
    if (!OnDevice(initial_state, dev) || !IsFloating(initial_state)) return false;
    if (initial_state.sizes() != at::IntArrayRef{q.size(0), q.size(1), q.size(3), v.size(3)}) {
      return false;
    }
  }
  return true;
}

namespace {

// A GLA per-token operand as the kernels read it: `tensor` (the input itself, or a copy) and its
// (batch, head, token) element strides.
struct GlaOperand {
  at::Tensor tensor;  // [B, H, T, D]
  GlaStrides strides;
};

// Strides of a [B, H, T, D] tensor for the kernels: a dim of size 1 gets stride 0 (never
// stepped over), so that only real strides decide alignment.
GlaStrides GlaStridesOf(const at::Tensor& x) {
  auto st = [&](int64_t d) { return x.size(d) == 1 ? int64_t{0} : x.stride(d); };
  return {st(0), st(1), st(2)};
}

// True when the kernels can address `x` in place: last dim contiguous, 16-byte aligned pointer
// and strides, and not all of (batch, head, token) broadcast (all-zero strides mean
// "contiguous" to the launchers).
bool GlaAddressable(const at::Tensor& x) {
  if (x.stride(3) != 1) return false;
  const GlaStrides s = GlaStridesOf(x);
  if (s.batch == 0 && s.head == 0 && s.token == 0 && x.size(0) * x.size(1) * x.size(2) > 1) {
    return false;
  }
  return GlaStridesAligned(x.data_ptr(), s, static_cast<int>(x.element_size()));
}

// `x` converted to `type`, read in place when the kernels can address it, else copied to a
// contiguous tensor (the only copy the kernels still need).
GlaOperand GlaOperandOf(const at::Tensor& x, at::ScalarType type) {
  at::Tensor t = x.to(type);
  if (!GlaAddressable(t)) t = t.contiguous();
  return {t, GlaStridesOf(t)};
}

// An uninitialised [B, H, T, dim] tensor of `type` whose batch, head and token dims lie in
// memory in the order of `like`'s: for a [B, H, T, D] view of a [B, T, H, D] buffer, a
// [B, H, T, dim] view of a new [B, T, H, dim] buffer (so transpose(1, 2) of it is contiguous).
at::Tensor GlaEmptyLike(const at::Tensor& like, int64_t dim, at::ScalarType type) {
  std::array<int64_t, 3> order = {0, 1, 2};  // outermost first
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return like.stride(a) > like.stride(b); });
  std::vector<int64_t> sizes, perm(4, 3);
  for (int i = 0; i < 3; ++i) {
    sizes.push_back(like.size(order[i]));
    perm[order[i]] = i;
  }
  sizes.push_back(dim);
  return at::empty(sizes, like.options().dtype(type)).permute(perm);
}

struct GlaForwardResult {
  at::Tensor output;        // [B, H, T, V] bf16, laid out as q (GlaEmptyLike)
  at::Tensor final_state;   // [B, H, K, V] fp32
  at::Tensor chunk_states;  // [B, H, N + 1, K, V] fp32, or undefined
};

// The forward kernel; with `keep_chunk_states` also the state at every chunk start.
// Packed sequences (`cu_seqlens` not empty): q, k, v, g [1, H, T, .], states [N, H, K, V] and
// chunk states [(total_chunks + N) * H, K, V] (VarlenSeqs's layout).
GlaForwardResult GlaForward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& g, double scale, const at::Tensor& initial_state,
                            bool keep_chunk_states, const std::vector<int64_t>& cu_seqlens) {
  const bool packed = !cu_seqlens.empty();
  TORCH_CHECK(packed ? GlaChunkedVarlenSupported(q, k, v, g, initial_state,
                                                 static_cast<int64_t>(cu_seqlens.size()) - 1)
                     : GlaChunkedSupported(q, k, v, g, initial_state),
              "cuda GlaChunked: unsupported inputs");
  const c10::cuda::CUDAGuard guard(q.device());
  const GlaOperand qc = GlaOperandOf(q, at::kBFloat16), kc = GlaOperandOf(k, at::kBFloat16);
  const GlaOperand vc = GlaOperandOf(v, at::kBFloat16), gc = GlaOperandOf(g, at::kFloat);
  at::Tensor s0;
  if (initial_state.defined()) s0 = initial_state.to(at::kFloat).contiguous();
  const int64_t h = q.size(1), t = q.size(2);
  const int num_sms = NumSms(q.device());
  VarlenPlan plan;
  if (packed) {
    CheckCuSeqlens(cu_seqlens, t, "cuda GlaChunkedVarlen");
    plan = MakeVarlenPlan(cu_seqlens, q.device(), h, num_sms);
  }
  const int64_t b = packed ? plan.num_seqs : q.size(0);  // states
  at::Tensor o = GlaEmptyLike(qc.tensor, v.size(3), at::kBFloat16);
  at::Tensor s1 = at::empty({b, h, q.size(3), v.size(3)}, q.options().dtype(at::kFloat));
  at::Tensor chunk_states;
  if (keep_chunk_states) {
    const int64_t n = (t + kGlaChunk - 1) / kGlaChunk;
    chunk_states =
        packed ? at::empty({(plan.seqs.total_chunks + b) * h, q.size(3), v.size(3)},
                           q.options().dtype(at::kFloat))
               : at::empty({b, h, n + 1, q.size(3), v.size(3)}, q.options().dtype(at::kFloat));
  }
  GlaChunkedParams p;
  p.q = qc.tensor.data_ptr();
  p.k = kc.tensor.data_ptr();
  p.v = vc.tensor.data_ptr();
  p.g = gc.tensor.data_ptr<float>();
  p.initial_state = s0.defined() ? s0.data_ptr<float>() : nullptr;
  p.o = o.data_ptr();
  p.q_strides = qc.strides;
  p.k_strides = kc.strides;
  p.v_strides = vc.strides;
  p.g_strides = gc.strides;
  p.o_strides = GlaStridesOf(o);
  p.final_state = s1.data_ptr<float>();
  p.chunk_states = keep_chunk_states ? chunk_states.data_ptr<float>() : nullptr;
  p.batch = b;
  p.heads = h;
  p.tokens = t;
  p.key_dim = static_cast<int>(q.size(3));
  p.value_dim = static_cast<int>(v.size(3));
  p.scale = static_cast<float>(scale);
  p.num_sms = num_sms;
  if (packed) {
    p.varlen = plan.seqs;
    p.segment_chunks = plan.segment_chunks;
    p.cu_segments = plan.cu_segments_device;
    p.total_segments = plan.cu_segments.back();
  }
  at::Tensor workspace;
  if (const size_t bytes = GlaChunkedWorkspaceBytes(p); bytes > 0) {
    workspace = at::empty({static_cast<int64_t>(bytes)}, q.options().dtype(at::kByte));
    p.workspace = workspace.data_ptr();
  }
  Check(LaunchGlaChunked(p, c10::cuda::getCurrentCUDAStream().stream()), "cuda GlaChunked");
  return {o, s1, chunk_states};
}

// The backward kernels from the forward's chunk states. dq, dk, dv come back in bf16 when
// `bf16_grads` (else fp32), each in its input's layout (GlaEmptyLike); dg in fp32 in g's layout;
// the initial state's gradient in fp32.
// Packed sequences (`cu_seqlens` not empty, checked by the forward): as GlaForward.
GlaChunkedGradients GlaBackward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& g, double scale, const at::Tensor& chunk_states,
                                const at::Tensor& d_output, const at::Tensor& d_final_state,
                                bool bf16_grads, const std::vector<int64_t>& cu_seqlens) {
  const c10::cuda::CUDAGuard guard(q.device());
  const bool packed = !cu_seqlens.empty();
  const GlaOperand qc = GlaOperandOf(q, at::kBFloat16), kc = GlaOperandOf(k, at::kBFloat16);
  const GlaOperand vc = GlaOperandOf(v, at::kBFloat16), gc = GlaOperandOf(g, at::kFloat);
  const int64_t bt = q.size(0), h = q.size(1), t = q.size(2), dk = q.size(3), dv = v.size(3);
  VarlenPlan plan;
  if (packed) plan = MakeVarlenPlan(cu_seqlens, q.device(), h, /*num_sms=*/0);
  const int64_t b = packed ? plan.num_seqs : bt;  // states
  TORCH_CHECK(!d_output.defined() || d_output.sizes() == at::IntArrayRef({bt, h, t, dv}),
              "cuda GlaChunked backward: bad do");
  const GlaOperand d_o = GlaOperandOf(
      d_output.defined() ? d_output : at::zeros({bt, h, t, dv}, q.options()), at::kBFloat16);
  at::Tensor d_s1;
  if (d_final_state.defined()) {
    d_s1 = d_final_state.to(at::kFloat).contiguous();
    TORCH_CHECK(d_s1.sizes() == at::IntArrayRef({b, h, dk, dv}),
                "cuda GlaChunked backward: bad final state gradient");
  }
  const at::ScalarType grad_type = bf16_grads ? at::kBFloat16 : at::kFloat;
  GlaChunkedGradients out{GlaEmptyLike(qc.tensor, dk, grad_type),
                          GlaEmptyLike(kc.tensor, dk, grad_type),
                          GlaEmptyLike(vc.tensor, dv, grad_type),
                          GlaEmptyLike(gc.tensor, dk, at::kFloat),
                          at::empty({b, h, dk, dv}, q.options().dtype(at::kFloat))};
  GlaChunkedBackwardParams p;
  p.q = qc.tensor.data_ptr();
  p.k = kc.tensor.data_ptr();
  p.v = vc.tensor.data_ptr();
  p.g = gc.tensor.data_ptr<float>();
  p.d_output = d_o.tensor.data_ptr();
  p.q_strides = qc.strides;
  p.k_strides = kc.strides;
  p.v_strides = vc.strides;
  p.g_strides = gc.strides;
  p.d_output_strides = d_o.strides;
  p.d_final_state = d_s1.defined() ? d_s1.data_ptr<float>() : nullptr;
  p.chunk_states = chunk_states.data_ptr<float>();
  p.dq = out.dq.data_ptr();
  p.dk = out.dk.data_ptr();
  p.dv = out.dv.data_ptr();
  p.dg = out.dg.data_ptr<float>();
  p.dq_strides = GlaStridesOf(out.dq);
  p.dk_strides = GlaStridesOf(out.dk);
  p.dv_strides = GlaStridesOf(out.dv);
  p.dg_strides = GlaStridesOf(out.dg);
  p.grads_bf16 = bf16_grads;
  p.d_initial_state = out.d_initial_state.data_ptr<float>();
  p.batch = b;
  p.heads = h;
  p.tokens = t;
  p.key_dim = static_cast<int>(dk);
  p.value_dim = static_cast<int>(dv);
  p.scale = static_cast<float>(scale);
  p.num_sms = NumSms(q.device());
  if (packed) p.varlen = plan.seqs;
  at::Tensor workspace;
  if (const size_t bytes = GlaChunkedBackwardWorkspaceBytes(p); bytes > 0) {
    workspace = at::empty({static_cast<int64_t>(bytes)}, q.options().dtype(at::kByte));
    p.workspace = workspace.data_ptr();
  }
  Check(LaunchGlaChunkedBackward(p, c10::cuda::getCurrentCUDAStream().stream()),
        "cuda GlaChunked backward");
  return out;
}

// Autograd node of the CUDA path: the forward keeps the chunk-start states ([B, H, N + 1, K, V]
// fp32, about K * V * 4 / 64 bytes per token and head) for the backward. `cu_seqlens`: packed
// sequences' offsets, or empty.
class GlaChunkedFunction : public torch::autograd::Function<GlaChunkedFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const at::Tensor& g,
                                                const at::Tensor& initial_state, double scale,
                                                const std::vector<int64_t>& cu_seqlens) {
    // An empty tensor stands for "no initial state" (see GlaChunkedWithGrad).
    const at::Tensor s0 = StateOrNone(initial_state);
    GlaForwardResult r = GlaForward(q, k, v, g, scale, s0, /*keep_chunk_states=*/true, cu_seqlens);
    ctx->save_for_backward({q, k, v, g});
    ctx->saved_data["chunk_states"] = r.chunk_states;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["cu_seqlens"] = cu_seqlens;
    ctx->saved_data["state_type"] =
        s0.defined() ? static_cast<int64_t>(s0.scalar_type()) : int64_t{-1};
    return {r.output, r.final_state};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &g = saved[3];
    // q, k, v are bf16 (GlaChunkedSupported): their gradients come out of the kernel in bf16,
    // in their layouts, with no conversion or copy here.
    const GlaChunkedGradients d =
        GlaBackward(q, k, v, g, ctx->saved_data["scale"].toDouble(),
                    ctx->saved_data["chunk_states"].toTensor(), grad_outputs[0], grad_outputs[1],
                    /*bf16_grads=*/true, ctx->saved_data["cu_seqlens"].toIntVector());
    const int64_t state_type = ctx->saved_data["state_type"].toInt();
    at::Tensor d_state;
    if (state_type >= 0) d_state = d.d_initial_state.to(static_cast<at::ScalarType>(state_type));
    return {d.dq.to(q.scalar_type()),
            d.dk.to(k.scalar_type()),
            d.dv.to(v.scalar_type()),
            d.dg.to(g.scalar_type()),
            d_state,
            at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

LinearAttentionOutput GlaChunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& g, double scale,
                                 const at::Tensor& initial_state) {
  GlaForwardResult r =
      GlaForward(q, k, v, g, scale, initial_state, /*keep_chunk_states=*/false, {});
  return {r.output, r.final_state};
}

LinearAttentionOutput GlaChunkedWithGrad(const at::Tensor& q, const at::Tensor& k,
                                         const at::Tensor& v, const at::Tensor& g, double scale,
                                         const at::Tensor& initial_state) {
  const at::Tensor s0 = StateInput(initial_state, q);
  const torch::autograd::variable_list out =
      GlaChunkedFunction::apply(q, k, v, g, s0, scale, std::vector<int64_t>{});
  return {out[0], out[1]};
}

GlaChunkedGradients GlaChunkedBackward(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& g, double scale,
                                       const at::Tensor& initial_state, const at::Tensor& d_output,
                                       const at::Tensor& d_final_state) {
  at::NoGradGuard no_grad;
  const GlaForwardResult r =
      GlaForward(q, k, v, g, scale, initial_state, /*keep_chunk_states=*/true, {});
  return GlaBackward(q, k, v, g, scale, r.chunk_states, d_output, d_final_state,
                     /*bf16_grads=*/false, {});
}

bool GlaChunkedVarlenSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& g, const at::Tensor& initial_state,
                               int64_t num_seqs) {
  return GlaChunkedSupported(q, k, v, g, at::Tensor()) && q.size(0) == 1 && num_seqs >= 1 &&
         StateSupported(initial_state, q, v, num_seqs);
}

LinearAttentionOutput GlaChunkedVarlen(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& g, double scale,
                                       const at::Tensor& initial_state,
                                       const std::vector<int64_t>& cu_seqlens) {
  CheckCuSeqlens(cu_seqlens, q.size(2), "cuda GlaChunkedVarlen");
  GlaForwardResult r =
      GlaForward(q, k, v, g, scale, initial_state, /*keep_chunk_states=*/false, cu_seqlens);
  return {r.output, r.final_state};
}

LinearAttentionOutput GlaChunkedVarlenWithGrad(const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, const at::Tensor& g,
                                               double scale, const at::Tensor& initial_state,
                                               const std::vector<int64_t>& cu_seqlens) {
  CheckCuSeqlens(cu_seqlens, q.size(2), "cuda GlaChunkedVarlen");
  const at::Tensor s0 = StateInput(initial_state, q);
  const torch::autograd::variable_list out =
      GlaChunkedFunction::apply(q, k, v, g, s0, scale, cu_seqlens);
  return {out[0], out[1]};
}

GlaChunkedGradients GlaChunkedVarlenBackward(const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v, const at::Tensor& g, double scale,
                                             const at::Tensor& initial_state,
                                             const at::Tensor& d_output,
                                             const at::Tensor& d_final_state,
                                             const std::vector<int64_t>& cu_seqlens) {
  CheckCuSeqlens(cu_seqlens, q.size(2), "cuda GlaChunkedVarlen backward");
  at::NoGradGuard no_grad;
  const GlaForwardResult r =
      GlaForward(q, k, v, g, scale, initial_state, /*keep_chunk_states=*/true, cu_seqlens);
  return GlaBackward(q, k, v, g, scale, r.chunk_states, d_output, d_final_state,
                     /*bf16_grads=*/false, cu_seqlens);
}

bool GatedDeltaChunkedSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& g, const at::Tensor& beta,
                                const at::Tensor& initial_state) {
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
  if (!GatedDeltaChunkedSupportsDims(static_cast<int>(q.size(3)), static_cast<int>(v.size(3)))) {
    return false;
  }
  if (q.size(0) * q.size(1) > kGatedDeltaMaxBatchHeads) return false;
  if (initial_state.defined()) {
    if (!OnDevice(initial_state, dev) || !IsFloating(initial_state)) return false;
    if (initial_state.sizes() != at::IntArrayRef{q.size(0), q.size(1), q.size(3), v.size(3)}) {
      return false;
    }
  }
  return true;
}

namespace {

struct GatedDeltaForwardResult {
  at::Tensor output;        // [B, H, T, V] bf16
  at::Tensor final_state;   // [B, H, K, V] fp32
  at::Tensor chunk_states;  // [B, H, N + 1, K, V] fp32, or undefined
};

// The forward kernel; with `keep_chunk_states` also the state at every chunk start. Packed
// sequences (`cu_seqlens` not empty): q, k, v [1, H, T, .], g and beta [1, H, T], states
// [N, H, K, V] and chunk states [(total_chunks + N) * H, K, V] (VarlenSeqs's layout).
GatedDeltaForwardResult GatedDeltaForward(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& g,
                                          const at::Tensor& beta, double scale,
                                          const at::Tensor& initial_state, bool keep_chunk_states,
                                          const std::vector<int64_t>& cu_seqlens) {
  const bool packed = !cu_seqlens.empty();
  TORCH_CHECK(packed ? GatedDeltaChunkedVarlenSupported(q, k, v, g, beta, initial_state,
                                                        static_cast<int64_t>(cu_seqlens.size()) - 1)
                     : GatedDeltaChunkedSupported(q, k, v, g, beta, initial_state),
              "cuda GatedDeltaChunked: unsupported inputs");
  const c10::cuda::CUDAGuard guard(q.device());
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const at::Tensor gc = g.to(at::kFloat).contiguous(), bc = beta.to(at::kFloat).contiguous();
  at::Tensor s0;
  if (initial_state.defined()) s0 = initial_state.to(at::kFloat).contiguous();
  const int64_t h = q.size(1), t = q.size(2);
  VarlenPlan plan;
  if (packed) {
    CheckCuSeqlens(cu_seqlens, t, "cuda GatedDeltaChunkedVarlen");
    plan = MakeVarlenPlan(cu_seqlens, q.device(), h, /*num_sms=*/0);
  }
  const int64_t b = packed ? plan.num_seqs : q.size(0);  // states
  at::Tensor o = at::empty({q.size(0), h, t, v.size(3)}, q.options());
  at::Tensor s1 = at::empty({b, h, q.size(3), v.size(3)}, q.options().dtype(at::kFloat));
  at::Tensor chunk_states;
  if (keep_chunk_states) {
    const int64_t n = (t + kGatedDeltaChunk - 1) / kGatedDeltaChunk;
    chunk_states =
        packed ? at::empty({(plan.seqs.total_chunks + b) * h, q.size(3), v.size(3)},
                           q.options().dtype(at::kFloat))
               : at::empty({b, h, n + 1, q.size(3), v.size(3)}, q.options().dtype(at::kFloat));
  }
  GatedDeltaChunkedParams p;
  p.q = qc.data_ptr();
  p.k = kc.data_ptr();
  p.v = vc.data_ptr();
  p.g = gc.data_ptr<float>();
  p.beta = bc.data_ptr<float>();
  p.initial_state = s0.defined() ? s0.data_ptr<float>() : nullptr;
  p.o = o.data_ptr();
  p.final_state = s1.data_ptr<float>();
  p.chunk_states = keep_chunk_states ? chunk_states.data_ptr<float>() : nullptr;
  p.batch = b;
  p.heads = h;
  p.tokens = t;
  p.key_dim = static_cast<int>(q.size(3));
  p.value_dim = static_cast<int>(v.size(3));
  p.scale = static_cast<float>(scale);
  p.num_sms = NumSms(q.device());
  if (packed) p.varlen = plan.seqs;
  Check(LaunchGatedDeltaChunked(p, c10::cuda::getCurrentCUDAStream().stream()),
        "cuda GatedDeltaChunked");
  return {o, s1, chunk_states};
}

// The backward kernels from the forward's chunk states; fp32 gradients. Packed sequences
// (`cu_seqlens` not empty, checked by the forward): as GatedDeltaForward.
GatedDeltaChunkedGradients GatedDeltaBackward(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const at::Tensor& g,
                                              const at::Tensor& beta, double scale,
                                              const at::Tensor& chunk_states,
                                              const at::Tensor& d_output,
                                              const at::Tensor& d_final_state,
                                              const std::vector<int64_t>& cu_seqlens) {
  const c10::cuda::CUDAGuard guard(q.device());
  const bool packed = !cu_seqlens.empty();
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const at::Tensor gc = g.to(at::kFloat).contiguous(), bc = beta.to(at::kFloat).contiguous();
  const int64_t bt = q.size(0), h = q.size(1), t = q.size(2), dk = q.size(3), dv = v.size(3);
  VarlenPlan plan;
  if (packed) plan = MakeVarlenPlan(cu_seqlens, q.device(), h, /*num_sms=*/0);
  const int64_t b = packed ? plan.num_seqs : bt;  // states
  const at::Tensor d_o = d_output.defined() ? d_output.to(at::kBFloat16).contiguous()
                                            : at::zeros({bt, h, t, dv}, q.options());
  TORCH_CHECK(d_o.sizes() == at::IntArrayRef({bt, h, t, dv}),
              "cuda GatedDeltaChunked backward: bad output gradient");
  at::Tensor d_s1;
  if (d_final_state.defined()) {
    d_s1 = d_final_state.to(at::kFloat).contiguous();
    TORCH_CHECK(d_s1.sizes() == at::IntArrayRef({b, h, dk, dv}),
                "cuda GatedDeltaChunked backward: bad final state gradient");
  }
  const auto f32 = q.options().dtype(at::kFloat);
  GatedDeltaChunkedGradients out{at::empty({bt, h, t, dk}, f32), at::empty({bt, h, t, dk}, f32),
                                 at::empty({bt, h, t, dv}, f32), at::empty({bt, h, t}, f32),
                                 at::empty({bt, h, t}, f32),     at::empty({b, h, dk, dv}, f32)};
  GatedDeltaChunkedBackwardParams p;
  p.q = qc.data_ptr();
  p.k = kc.data_ptr();
  p.v = vc.data_ptr();
  p.g = gc.data_ptr<float>();
  p.beta = bc.data_ptr<float>();
  p.d_output = d_o.data_ptr();
  p.d_final_state = d_s1.defined() ? d_s1.data_ptr<float>() : nullptr;
  p.chunk_states = chunk_states.data_ptr<float>();
  p.dq = out.dq.data_ptr<float>();
  p.dk = out.dk.data_ptr<float>();
  p.dv = out.dv.data_ptr<float>();
  p.dg = out.dg.data_ptr<float>();
  p.dbeta = out.dbeta.data_ptr<float>();
  p.d_initial_state = out.d_initial_state.data_ptr<float>();
  p.batch = b;
  p.heads = h;
  p.tokens = t;
  p.key_dim = static_cast<int>(dk);
  p.value_dim = static_cast<int>(dv);
  p.scale = static_cast<float>(scale);
  p.num_sms = NumSms(q.device());
  if (packed) p.varlen = plan.seqs;
  at::Tensor workspace;
  if (const size_t bytes = GatedDeltaChunkedBackwardWorkspaceBytes(p); bytes > 0) {
    workspace = at::empty({static_cast<int64_t>(bytes)}, q.options().dtype(at::kByte));
    p.workspace = workspace.data_ptr();
  }
  Check(LaunchGatedDeltaChunkedBackward(p, c10::cuda::getCurrentCUDAStream().stream()),
        "cuda GatedDeltaChunked backward");
  return out;
}

// Autograd node of the CUDA path: the forward keeps the chunk-start states ([B, H, N + 1, K, V]
// fp32, about K * V * 4 / 64 bytes per token and head) for the backward.
class GatedDeltaChunkedFunction : public torch::autograd::Function<GatedDeltaChunkedFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const at::Tensor& g,
                                                const at::Tensor& beta,
                                                const at::Tensor& initial_state, double scale,
                                                const std::vector<int64_t>& cu_seqlens) {
    // An empty tensor stands for "no initial state" (see GatedDeltaChunkedWithGrad).
    const at::Tensor s0 = StateOrNone(initial_state);
    GatedDeltaForwardResult r =
        GatedDeltaForward(q, k, v, g, beta, scale, s0, /*keep_chunk_states=*/true, cu_seqlens);
    ctx->save_for_backward({q, k, v, g, beta});
    ctx->saved_data["chunk_states"] = r.chunk_states;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["cu_seqlens"] = cu_seqlens;
    ctx->saved_data["state_type"] =
        s0.defined() ? static_cast<int64_t>(s0.scalar_type()) : int64_t{-1};
    return {r.output, r.final_state};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &g = saved[3], &beta = saved[4];
    const GatedDeltaChunkedGradients d =
        GatedDeltaBackward(q, k, v, g, beta, ctx->saved_data["scale"].toDouble(),
                           ctx->saved_data["chunk_states"].toTensor(), grad_outputs[0],
                           grad_outputs[1], ctx->saved_data["cu_seqlens"].toIntVector());
    const int64_t state_type = ctx->saved_data["state_type"].toInt();
    at::Tensor d_state;
    if (state_type >= 0) d_state = d.d_initial_state.to(static_cast<at::ScalarType>(state_type));
    return {d.dq.to(q.scalar_type()),
            d.dk.to(k.scalar_type()),
            d.dv.to(v.scalar_type()),
            d.dg.to(g.scalar_type()),
            d.dbeta.to(beta.scalar_type()),
            d_state,
            at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

LinearAttentionOutput GatedDeltaChunked(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const at::Tensor& g,
                                        const at::Tensor& beta, double scale,
                                        const at::Tensor& initial_state) {
  GatedDeltaForwardResult r =
      GatedDeltaForward(q, k, v, g, beta, scale, initial_state, /*keep_chunk_states=*/false, {});
  return {r.output, r.final_state};
}

LinearAttentionOutput GatedDeltaChunkedWithGrad(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const at::Tensor& g,
                                                const at::Tensor& beta, double scale,
                                                const at::Tensor& initial_state) {
  const at::Tensor s0 = StateInput(initial_state, q);
  const torch::autograd::variable_list out =
      GatedDeltaChunkedFunction::apply(q, k, v, g, beta, s0, scale, std::vector<int64_t>{});
  return {out[0], out[1]};
}

GatedDeltaChunkedGradients GatedDeltaChunkedBackward(const at::Tensor& q, const at::Tensor& k,
                                                     const at::Tensor& v, const at::Tensor& g,
                                                     const at::Tensor& beta, double scale,
                                                     const at::Tensor& initial_state,
                                                     const at::Tensor& d_output,
                                                     const at::Tensor& d_final_state) {
  at::NoGradGuard no_grad;
  const GatedDeltaForwardResult r =
      GatedDeltaForward(q, k, v, g, beta, scale, initial_state, /*keep_chunk_states=*/true, {});
  return GatedDeltaBackward(q, k, v, g, beta, scale, r.chunk_states, d_output, d_final_state, {});
}

bool GatedDeltaChunkedVarlenSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& g, const at::Tensor& beta,
                                      const at::Tensor& initial_state, int64_t num_seqs) {
  return GatedDeltaChunkedSupported(q, k, v, g, beta, at::Tensor()) && q.size(0) == 1 &&
         num_seqs >= 1 && num_seqs * q.size(1) <= kGatedDeltaMaxBatchHeads &&
         StateSupported(initial_state, q, v, num_seqs);
}

LinearAttentionOutput GatedDeltaChunkedVarlen(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const at::Tensor& g,
                                              const at::Tensor& beta, double scale,
                                              const at::Tensor& initial_state,
                                              const std::vector<int64_t>& cu_seqlens) {
  CheckCuSeqlens(cu_seqlens, q.size(2), "cuda GatedDeltaChunkedVarlen");
  GatedDeltaForwardResult r = GatedDeltaForward(q, k, v, g, beta, scale, initial_state,
                                                /*keep_chunk_states=*/false, cu_seqlens);
  return {r.output, r.final_state};
}

LinearAttentionOutput GatedDeltaChunkedVarlenWithGrad(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v, const at::Tensor& g,
                                                      const at::Tensor& beta, double scale,
                                                      const at::Tensor& initial_state,
                                                      const std::vector<int64_t>& cu_seqlens) {
  CheckCuSeqlens(cu_seqlens, q.size(2), "cuda GatedDeltaChunkedVarlen");
  const at::Tensor s0 = StateInput(initial_state, q);
  const torch::autograd::variable_list out =
      GatedDeltaChunkedFunction::apply(q, k, v, g, beta, s0, scale, cu_seqlens);
  return {out[0], out[1]};
}

GatedDeltaChunkedGradients GatedDeltaChunkedVarlenBackward(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const at::Tensor& g,
                                                           const at::Tensor& beta, double scale,
                                                           const at::Tensor& initial_state,
                                                           const at::Tensor& d_output,
                                                           const at::Tensor& d_final_state,
                                                           const std::vector<int64_t>& cu_seqlens) {
  CheckCuSeqlens(cu_seqlens, q.size(2), "cuda GatedDeltaChunkedVarlen backward");
  at::NoGradGuard no_grad;
  const GatedDeltaForwardResult r = GatedDeltaForward(q, k, v, g, beta, scale, initial_state,
                                                      /*keep_chunk_states=*/true, cu_seqlens);
  return GatedDeltaBackward(q, k, v, g, beta, scale, r.chunk_states, d_output, d_final_state,
                            cu_seqlens);
}

bool LinearStepSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& state) {
  if (!q.defined() || !q.is_cuda()) return false;
  if (!KernelsRunOnDevice(q.device().index(), 0)) return false;
  const at::Device dev = q.device();
  if (!OnDevice(k, dev) || !OnDevice(v, dev) || !OnDevice(state, dev)) return false;
  const auto t = q.scalar_type();
  if ((t != at::kFloat && t != at::kBFloat16) || k.scalar_type() != t || v.scalar_type() != t ||
      state.scalar_type() != at::kFloat) {
    return false;
  }
  if (q.dim() != 3 || k.sizes() != q.sizes() || v.dim() != 3 || v.size(0) != q.size(0) ||
      v.size(1) != q.size(1)) {
    return false;
  }
  if (state.sizes() != at::IntArrayRef{q.size(0), q.size(1), q.size(2), v.size(2)}) return false;
  return LinearStepSupportsDims(static_cast<int>(q.size(2)), static_cast<int>(v.size(2))) &&
         q.size(0) * q.size(1) <= 65535;
}

namespace {

LinearAttentionOutput Step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& g, const at::Tensor& beta, double scale,
                           const at::Tensor& state, bool delta) {
  const char* op = delta ? "cuda GatedDeltaStep" : "cuda GlaStep";
  TORCH_CHECK(LinearStepSupported(q, k, v, state), op, ": unsupported inputs");
  const c10::cuda::CUDAGuard guard(q.device());
  const auto type = q.scalar_type();
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const at::Tensor gc = g.to(type).contiguous();
  TORCH_CHECK(gc.numel() == (delta ? q.size(0) * q.size(1) : q.numel()), op, ": bad g shape");
  at::Tensor bc;
  if (delta) {
    bc = beta.to(type).contiguous();
    TORCH_CHECK(bc.numel() == q.size(0) * q.size(1), op, ": bad beta shape");
  }
  const at::Tensor sc = state.contiguous();
  at::Tensor o = at::empty({q.size(0), q.size(1), v.size(2)}, q.options());
  at::Tensor s1 = at::empty_like(sc);
  LinearStepParams p;
  p.q = qc.data_ptr();
  p.k = kc.data_ptr();
  p.v = vc.data_ptr();
  p.g = gc.data_ptr();
  p.beta = delta ? bc.data_ptr() : nullptr;
  p.state = sc.data_ptr<float>();
  p.o = o.data_ptr();
  p.new_state = s1.data_ptr<float>();
  p.batch_heads = q.size(0) * q.size(1);
  p.key_dim = static_cast<int>(q.size(2));
  p.value_dim = static_cast<int>(v.size(2));
  p.scale = static_cast<float>(scale);
  p.bf16 = type == at::kBFloat16;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  Check(delta ? LaunchGatedDeltaStep(p, stream) : LaunchGlaStep(p, stream), op);
  return {o, s1};
}

}  // namespace

LinearAttentionOutput GlaStep(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& g, double scale, const at::Tensor& state) {
  return Step(q, k, v, g, at::Tensor(), scale, state, /*delta=*/false);
}

LinearAttentionOutput GatedDeltaStep(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& g, const at::Tensor& beta, double scale,
                                     const at::Tensor& state) {
  return Step(q, k, v, g, beta, scale, state, /*delta=*/true);
}

}  // namespace hyb::kernels::cuda
