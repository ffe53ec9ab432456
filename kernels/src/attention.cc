#include "hyb/kernels/attention.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <optional>

#include "needs_grad.h"

#ifdef HYB_WITH_CUDA
#include "hyb/kernels/cuda_attention.h"
#endif

// SDPA's enable_gqa argument (and its use by the fused backends) arrived in LibTorch 2.5.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
#define HYB_SDPA_HAS_GQA 1
#else
#define HYB_SDPA_HAS_GQA 0
#endif

namespace hyb::kernels {
namespace {

// [B, Hkv, T, D] -> [B, Hkv * n_rep, T, D], each key/value head repeated n_rep times in a row.
at::Tensor RepeatKv(const at::Tensor& x, int64_t n_rep) {
  if (n_rep == 1) return x;
  const auto b = x.size(0), h = x.size(1), t = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, h, n_rep, t, d}).reshape({b, h * n_rep, t, d});
}

at::Tensor MathAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& mask /* [Tq, Tk] bool or undefined */, double scale) {
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) * scale;  // [B, H, Tq, Tk]
  if (mask.defined()) {
    scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
  }
  // fp32 softmax as transformers' eager path; fp64 inputs (tests) keep double precision.
  const auto softmax_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor probs = at::softmax(scores, -1, softmax_type).to(q.scalar_type());
  return at::matmul(probs, v);
}

#if HYB_SDPA_HAS_GQA
// Whether SDPA picks a fused backend (not the math one) for causal grouped-query attention on
// these inputs. The choice depends only on shapes, dtype, layout and device, so it is asked of
// SDPA's own selector.
bool FusedGqaSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       std::optional<double> scale) {
  const int64_t choice =
      at::_fused_sdp_choice(q, k, v, {}, 0.0, /*is_causal=*/true, scale, /*enable_gqa=*/true);
  // sdp::SDPBackend's values (its header is not among LibTorch's installed ones): error = -1,
  // math = 0, the fused backends from 1 up.
  return choice >= 1;
}
#endif

}  // namespace

bool HasFusedAttention() { return TORCH_VERSION_MAJOR >= 2; }

at::Tensor AttentionMask(int64_t tq, int64_t tk, const AttentionOptions& options,
                         const at::Device& device) {
  auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor qpos = at::arange(options.q_offset, options.q_offset + tq, opts).unsqueeze(1);
  at::Tensor kpos = at::arange(0, tk, opts).unsqueeze(0);
  at::Tensor allowed = kpos.le(qpos);
  if (options.sliding_window > 0) {
    allowed = allowed.logical_and(kpos.gt(qpos - options.sliding_window));
  }
  return allowed;
}

at::Tensor SoftmaxAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const AttentionOptions& options) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attention expects 4-D q, k, v");
  TORCH_CHECK(k.sizes() == v.sizes(), "attention: k and v shapes differ");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(3) == k.size(3), "attention: q/k shape mismatch");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0,
              "attention: query heads must be a multiple of key/value heads");
  const int64_t tq = q.size(2), tk = k.size(2);
  const int64_t n_rep = q.size(1) / k.size(1);
  TORCH_CHECK(!(options.key_mask.defined() && options.key_end.defined()),
              "attention: key_mask and key_end are alternatives, both were given");
  if (options.key_mask.defined()) {
    TORCH_CHECK(tq == 1, "attention: a key mask needs a single query, got ", tq);
    TORCH_CHECK(options.key_mask.dim() == 1 && options.key_mask.size(0) == tk,
                "attention: key mask must be [", tk, "]");
  } else if (options.key_end.defined()) {
    TORCH_CHECK(tq == 1, "attention: a key end needs a single query, got ", tq);
    TORCH_CHECK(options.key_end.numel() == 1 && options.key_end.scalar_type() == at::kLong &&
                    options.key_end.device() == k.device(),
                "attention: key_end must be one int64 on ", k.device());
  } else {
    TORCH_CHECK(options.q_offset + tq == tk, "attention: q_offset + Tq must equal Tk");
  }
  const bool window_inactive = options.sliding_window == 0 || options.sliding_window >= tk;
  if (tq == 1) {
    // One query per head: the n_rep query heads of a key/value group form that group's query
    // rows, so every key/value head is read where it lies (no repeated copy of the cache). The
    // rows of a group see the same keys, so a mask over keys applies to all of them.
    const int64_t b = q.size(0), hkv = k.size(1), d = q.size(3);
#ifdef HYB_WITH_CUDA
    // The split-KV kernel reads only the visible keys, spread over the whole device. Forward
    // only: with a gradient to compute the ATen path below runs.
    if (!options.force_math && !NeedsGrad({q, k, v}) && !options.key_mask.defined() && q.is_cuda() &&
        cuda::AttentionDecodeSupported(q, k, v)) {
      if (options.key_end.defined()) {
        return cuda::AttentionDecodeAt(q, k, v, options.key_end, options.sliding_window,
                                       options.scale);
      }
      return cuda::AttentionDecode(q, k, v, options.sliding_window, options.scale);
    }
#endif
    const at::Tensor qg = q.reshape({b, hkv, n_rep, d});
    at::Tensor mask;
    if (options.key_mask.defined()) {
      mask = options.key_mask.view({1, 1, 1, tk});
    } else if (options.key_end.defined()) {
      // Keys at or before the end (and inside the window), computed on the keys' device.
      const at::Tensor key_pos =
          at::arange(tk, at::TensorOptions().dtype(at::kLong).device(k.device()));
      const at::Tensor end = options.key_end.reshape({1});
      at::Tensor visible = key_pos.le(end);
      if (options.sliding_window > 0) {
        visible = visible.logical_and(key_pos.gt(end - options.sliding_window));
      }
      mask = visible.view({1, 1, 1, tk});
    } else if (!window_inactive) {
      mask = AttentionMask(1, tk, options, q.device()).view({1, 1, 1, tk});
    }
    at::Tensor o;
#if TORCH_VERSION_MAJOR >= 2
    if (!options.force_math) {
      // An undefined tensor is not "no mask" to SDPA: pass an empty optional.
      std::optional<at::Tensor> attn_mask;
      if (mask.defined()) attn_mask = mask;
      o = at::scaled_dot_product_attention(qg, k, v, attn_mask, 0.0, false, options.scale);
    }
#endif
    if (!o.defined()) o = MathAttention(qg, k, v, mask, options.scale);
    return o.reshape({b, hkv * n_rep, 1, d});
  }
  // Plain causal attention over a fresh sequence needs no explicit mask.
  const bool plain_causal = options.q_offset == 0 && options.sliding_window == 0;
#if HYB_SDPA_HAS_GQA
  // Grouped-query attention read in place: the fused kernels index each key/value head for its
  // n_rep query heads, so the repeated copy of keys and values (RepeatKv below) is never made.
  // Only where a fused backend takes the call; the math backend would expand the heads itself.
  if (!options.force_math && plain_causal && n_rep > 1 && q.is_cuda() &&
      FusedGqaSupported(q, k, v, options.scale)) {
    return at::scaled_dot_product_attention(q, k, v, {}, 0.0, true, options.scale,
                                            /*enable_gqa=*/true);
  }
#endif
  const at::Tensor kk = RepeatKv(k, n_rep), vv = RepeatKv(v, n_rep);
#if TORCH_VERSION_MAJOR >= 2
  if (!options.force_math) {
    if (plain_causal) {
      return at::scaled_dot_product_attention(q, kk, vv, {}, 0.0, true, options.scale);
    }
    const at::Tensor mask = AttentionMask(tq, tk, options, q.device());
    return at::scaled_dot_product_attention(q, kk, vv, mask, 0.0, false, options.scale);
  }
#endif
  return MathAttention(q, kk, vv, AttentionMask(tq, tk, options, q.device()), options.scale);
}

}  // namespace hyb::kernels
