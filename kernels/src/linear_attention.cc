#include "hyb/kernels/linear_attention.h"

#include <torch/torch.h>

#include "hyb/kernels/cuda_gated_delta.h"
#include "hyb/kernels/cuda_ops.h"
#include "needs_grad.h"

namespace hyb::kernels {
namespace {

at::Tensor ZeroState(const at::Tensor& k, const at::Tensor& v) {
  return at::zeros({k.size(0), k.size(1), k.size(-1), v.size(-1)}, k.options());
}

void CheckQkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* op) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op, ": q, k, v must be [B, H, T, D]");
  TORCH_CHECK(q.sizes() == k.sizes(), op, ": q and k shapes differ");
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == q.size(2), op,
              ": v must be [B, H, T, V] matching q");
}

// Pads dimension 2 (time) of x up to `t` with zeros.
at::Tensor PadTime(const at::Tensor& x, int64_t t) {
  if (x.size(2) == t) return x;
  std::vector<int64_t> shape = x.sizes().vec();
  shape[2] = t - x.size(2);
  return at::cat({x, at::zeros(shape, x.options())}, 2);
}

}  // namespace

LinearAttentionOutput GlaStep(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& g, double scale, const at::Tensor& state) {
#ifdef HYB_WITH_CUDA
  if (!NeedsGrad({q, k, v, g, state}) && cuda::LinearStepSupported(q, k, v, state) &&
      g.sizes() == q.sizes() && g.device() == q.device()) {
    return cuda::GlaStep(q, k, v, g, scale, state);
  }
#endif
  return GlaStepReference(q, k, v, g, scale, state);
}

LinearAttentionOutput GlaStepReference(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& g, double scale,
                                       const at::Tensor& state) {
  // S = diag(exp(g)) S + k v^T
  at::Tensor s = state * g.exp().unsqueeze(-1) + k.unsqueeze(-1) * v.unsqueeze(-2);
  at::Tensor o = at::matmul(q.unsqueeze(-2), s).squeeze(-2) * scale;  // [B, H, V]
  return {o, s};
}

LinearAttentionOutput GatedDeltaStep(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& g, const at::Tensor& beta, double scale,
                                     const at::Tensor& state) {
#ifdef HYB_WITH_CUDA
  if (!NeedsGrad({q, k, v, g, beta, state}) && cuda::LinearStepSupported(q, k, v, state) &&
      g.dim() == 2 && beta.dim() == 2 && g.size(0) == q.size(0) && g.size(1) == q.size(1) &&
      beta.sizes() == g.sizes() && g.device() == q.device() && beta.device() == q.device()) {
    return cuda::GatedDeltaStep(q, k, v, g, beta, scale, state);
  }
#endif
  return GatedDeltaStepReference(q, k, v, g, beta, scale, state);
}

LinearAttentionOutput GatedDeltaStepReference(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const at::Tensor& g,
                                              const at::Tensor& beta, double scale,
                                              const at::Tensor& state) {
  // S = a (S - beta k (k^T S)) + beta k v^T  ==  a S + k (beta (v - a S^T k))^T
  const at::Tensor a = g.exp().unsqueeze(-1).unsqueeze(-1);               // [B, H, 1, 1]
  const at::Tensor decayed = state * a;                                    // a S
  const at::Tensor kts = at::matmul(k.unsqueeze(-2), decayed).squeeze(-2);  // (aS)^T k: [B, H, V]
  const at::Tensor w = beta.unsqueeze(-1) * (v - kts);                     // [B, H, V]
  at::Tensor s = decayed + k.unsqueeze(-1) * w.unsqueeze(-2);
  at::Tensor o = at::matmul(q.unsqueeze(-2), s).squeeze(-2) * scale;
  return {o, s};
}

LinearAttentionOutput GlaRecurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& g, double scale,
                                   const at::Tensor& initial_state) {
  CheckQkv(q, k, v, "GlaRecurrent");
  TORCH_CHECK(g.sizes() == k.sizes(), "GlaRecurrent: g must match k");
  at::Tensor s = initial_state.defined() ? initial_state : ZeroState(k, v);
  std::vector<at::Tensor> outs;
  for (int64_t t = 0; t < q.size(2); ++t) {
    auto step = GlaStepReference(q.select(2, t), k.select(2, t), v.select(2, t), g.select(2, t),
                                 scale, s);
    outs.push_back(step.output);
    s = step.final_state;
  }
  return {at::stack(outs, 2), s};
}

LinearAttentionOutput GatedDeltaRecurrent(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& g,
                                          const at::Tensor& beta, double scale,
                                          const at::Tensor& initial_state) {
  CheckQkv(q, k, v, "GatedDeltaRecurrent");
  TORCH_CHECK(g.sizes() == q.sizes().slice(0, 3) && beta.sizes() == g.sizes(),
              "GatedDeltaRecurrent: g and beta must be [B, H, T]");
  at::Tensor s = initial_state.defined() ? initial_state : ZeroState(k, v);
  std::vector<at::Tensor> outs;
  for (int64_t t = 0; t < q.size(2); ++t) {
    auto step = GatedDeltaStepReference(q.select(2, t), k.select(2, t), v.select(2, t), g.select(2, t),
                               beta.select(2, t), scale, s);
    outs.push_back(step.output);
    s = step.final_state;
  }
  return {at::stack(outs, 2), s};
}

LinearAttentionOutput GlaChunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& g, double scale, const at::Tensor& initial_state,
                                 int64_t chunk_size) {
  CheckQkv(q, k, v, "GlaChunked");
  TORCH_CHECK(g.sizes() == k.sizes(), "GlaChunked: g must match k");
  TORCH_CHECK(chunk_size > 0, "GlaChunked: chunk_size must be positive");
#ifdef HYB_WITH_CUDA
  // The kernel's chunk length is its own (the result does not depend on it).
  if (cuda::GlaChunkedSupported(q, k, v, g, initial_state)) {
    if (NeedsGrad({q, k, v, g, initial_state})) {
      return cuda::GlaChunkedWithGrad(q, k, v, g, scale, initial_state);
    }
    return cuda::GlaChunked(q, k, v, g, scale, initial_state);
  }
#endif
  return GlaChunkedReference(q, k, v, g, scale, initial_state, chunk_size);
}

LinearAttentionOutput GlaChunkedReference(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& g, double scale,
                                          const at::Tensor& initial_state, int64_t chunk_size) {
  CheckQkv(q, k, v, "GlaChunked");
  TORCH_CHECK(g.sizes() == k.sizes(), "GlaChunked: g must match k");
  TORCH_CHECK(chunk_size > 0, "GlaChunked: chunk_size must be positive");
  const int64_t t = q.size(2), c = chunk_size;
  const int64_t n = (t + c - 1) / c;
  // Zero padding at the end (k = v = 0, g = 0) changes neither earlier outputs nor the state.
  const at::Tensor qp = PadTime(q, n * c), kp = PadTime(k, n * c), vp = PadTime(v, n * c);
  const at::Tensor gp = PadTime(g, n * c);
  at::Tensor s = initial_state.defined() ? initial_state : ZeroState(k, v);
  // Causal mask over (t, s) positions inside a chunk.
  const at::Tensor causal =
      at::ones({c, c}, q.options().dtype(at::kBool)).tril().view({1, 1, c, c, 1});
  std::vector<at::Tensor> outs;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor qc = qp.narrow(2, i * c, c), kc = kp.narrow(2, i * c, c);
    const at::Tensor vc = vp.narrow(2, i * c, c);
    const at::Tensor b = gp.narrow(2, i * c, c).cumsum(2);  // [B, H, C, K] log decay from start
    // Intra-chunk: A[t, s] = sum_d q_t[d] k_s[d] exp(b_t[d] - b_s[d]) for s <= t. The exponent is
    // <= 0 on the causal part; the masked part is set to -inf before exp (never overflows).
    at::Tensor diff = b.unsqueeze(3) - b.unsqueeze(2);  // [B, H, C(t), C(s), K]
    diff = diff.masked_fill(causal.logical_not(), -std::numeric_limits<double>::infinity());
    const at::Tensor attn = (qc.unsqueeze(3) * kc.unsqueeze(2) * diff.exp()).sum(-1);  // [B,H,C,C]
    at::Tensor o = at::matmul(attn, vc) + at::matmul(qc * b.exp(), s);
    outs.push_back(o * scale);
    // State to the end of the chunk: decay by exp(b_C) and add exp(b_C - b_s) k_s v_s^T.
    const at::Tensor b_last = b.narrow(2, c - 1, 1);                   // [B, H, 1, K]
    const at::Tensor k_decayed = kc * (b_last - b).exp();              // [B, H, C, K]
    s = s * b_last.squeeze(2).exp().unsqueeze(-1) + at::matmul(k_decayed.transpose(2, 3), vc);
  }
  return {at::cat(outs, 2).narrow(2, 0, t), s};
}

GlaChunkedGradients GlaChunkedBackwardReference(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const at::Tensor& g,
                                                double scale, const at::Tensor& initial_state,
                                                const at::Tensor& d_output,
                                                const at::Tensor& d_final_state,
                                                int64_t chunk_size) {
  CheckQkv(q, k, v, "GlaChunkedBackward");
  TORCH_CHECK(g.sizes() == k.sizes(), "GlaChunkedBackward: g must match k");
  TORCH_CHECK(d_output.sizes() == v.sizes(), "GlaChunkedBackward: d_output must match v");
  TORCH_CHECK(chunk_size > 0, "GlaChunkedBackward: chunk_size must be positive");
  const int64_t t = q.size(2), c = chunk_size, n = (t + c - 1) / c;
  const int64_t bsz = q.size(0), h = q.size(1);
  const at::Tensor zero_state = ZeroState(k, v);
  // [B, H, N, C, D] views of the zero-padded inputs (padding changes no gradient of real tokens).
  auto chunks = [&](const at::Tensor& x) {
    return PadTime(x, n * c).reshape({bsz, h, n, c, x.size(-1)});
  };
  const at::Tensor qc = chunks(q), kc = chunks(k), vc = chunks(v), dc = chunks(d_output);
  const at::Tensor b = chunks(g).cumsum(3);         // log decay since the chunk start
  const at::Tensor b_last = b.narrow(3, c - 1, 1);  // [B, H, N, 1, K]
  const at::Tensor to_end = (b_last - b).exp();     // e^(b_C - b_s) <= 1
  const at::Tensor decay = b_last.squeeze(3).exp().unsqueeze(-1);  // [B, H, N, K, 1]

  // States at every chunk start (index n: the final state).
  std::vector<at::Tensor> states = {initial_state.defined() ? initial_state : zero_state};
  for (int64_t i = 0; i < n; ++i) {
    states.push_back(states.back() * decay.select(2, i) +
                     at::matmul((kc * to_end).select(2, i).transpose(-1, -2), vc.select(2, i)));
  }
  const at::Tensor s_all = at::stack(states, 2);  // [B, H, N + 1, K, V]
  // State gradients at every chunk end, in reverse: dS0 = e^b_C dS + scale (e^b q)^T do.
  const at::Tensor qe = qc * b.exp();
  std::vector<at::Tensor> ends(n);
  at::Tensor ds = d_final_state.defined() ? d_final_state : zero_state;
  for (int64_t i = n - 1; i >= 0; --i) {
    ends[i] = ds;
    ds = ds * decay.select(2, i) +
         at::matmul(qe.select(2, i).transpose(-1, -2), dc.select(2, i)) * scale;
  }
  if (n == 0) {
    return {at::zeros_like(q), at::zeros_like(k), at::zeros_like(v), at::zeros_like(g), ds};
  }
  const at::Tensor ds_end = at::stack(ends, 2);  // [B, H, N, K, V]
  const at::Tensor s0 = s_all.narrow(2, 0, n), s_end = s_all.narrow(2, 1, n);

  // All chunks at once. e[t, s, d] = e^(b_t[d] - b_s[d]) for s <= t, else 0.
  const at::Tensor causal = at::ones({c, c}, q.options().dtype(at::kBool)).tril();
  const at::Tensor e = (b.unsqueeze(4) - b.unsqueeze(3))
                           .masked_fill(causal.logical_not().view({c, c, 1}),
                                        -std::numeric_limits<double>::infinity())
                           .exp();                                               // [B,H,N,C,C,K]
  const at::Tensor a = (qc.unsqueeze(4) * kc.unsqueeze(3) * e).sum(-1) * scale;  // [B,H,N,C,C]
  const at::Tensor da =
      (at::matmul(dc, vc.transpose(-1, -2)) * scale).masked_fill(causal.logical_not(), 0.0);
  const at::Tensor dq = b.exp() * at::matmul(dc, s0.transpose(-1, -2)) * scale +
                        (da.unsqueeze(-1) * e * kc.unsqueeze(3)).sum(4);
  const at::Tensor dk = (da.unsqueeze(-1) * e * qc.unsqueeze(4)).sum(3) +
                        to_end * at::matmul(vc, ds_end.transpose(-1, -2));
  const at::Tensor dv = at::matmul(a.transpose(-1, -2), dc) + at::matmul(kc * to_end, ds_end);
  const at::Tensor db = qc * dq - kc * dk;
  const at::Tensor dg = db.flip(3).cumsum(3).flip(3) + (s_end * ds_end).sum(-1).unsqueeze(3);
  auto unchunk = [&](const at::Tensor& x) {
    return x.reshape({bsz, h, n * c, x.size(-1)}).narrow(2, 0, t);
  };
  return {unchunk(dq), unchunk(dk), unchunk(dv), unchunk(dg), ds};
}

LinearAttentionOutput GatedDeltaChunked(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const at::Tensor& g,
                                        const at::Tensor& beta, double scale,
                                        const at::Tensor& initial_state, int64_t chunk_size) {
  CheckQkv(q, k, v, "GatedDeltaChunked");
  TORCH_CHECK(g.sizes() == q.sizes().slice(0, 3) && beta.sizes() == g.sizes(),
              "GatedDeltaChunked: g and beta must be [B, H, T]");
  TORCH_CHECK(chunk_size > 0, "GatedDeltaChunked: chunk_size must be positive");
#ifdef HYB_WITH_CUDA
  // The kernels' chunk length is their own (the result does not depend on it). The
  // chunk-parallel kernels where they apply (the forward alone at more head dims than with
  // autograd), the sequential ones for the rest.
  const bool grad = NeedsGrad({q, k, v, g, beta, initial_state});
  if (cuda::GatedDeltaChunkedFastSupported(q, k, v, g, beta, initial_state, !grad)) {
    if (grad) return cuda::GatedDeltaChunkedFastWithGrad(q, k, v, g, beta, scale, initial_state);
    return cuda::GatedDeltaChunkedFast(q, k, v, g, beta, scale, initial_state);
  }
  if (cuda::GatedDeltaChunkedSupported(q, k, v, g, beta, initial_state)) {
    if (grad) return cuda::GatedDeltaChunkedWithGrad(q, k, v, g, beta, scale, initial_state);
    return cuda::GatedDeltaChunked(q, k, v, g, beta, scale, initial_state);
  }
#endif
  return GatedDeltaChunkedReference(q, k, v, g, beta, scale, initial_state, chunk_size);
}

LinearAttentionOutput GatedDeltaChunkedReference(const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v, const at::Tensor& g,
                                                 const at::Tensor& beta, double scale,
                                                 const at::Tensor& initial_state,
                                                 int64_t chunk_size) {
  CheckQkv(q, k, v, "GatedDeltaChunked");
  TORCH_CHECK(g.sizes() == q.sizes().slice(0, 3) && beta.sizes() == g.sizes(),
              "GatedDeltaChunked: g and beta must be [B, H, T]");
  TORCH_CHECK(chunk_size > 0, "GatedDeltaChunked: chunk_size must be positive");
  const int64_t t = q.size(2), c = chunk_size;
  const int64_t n = (t + c - 1) / c;
  // Padding with k = v = 0, beta = 0, g = 0 leaves outputs and state unchanged.
  const at::Tensor qp = PadTime(q, n * c), kp = PadTime(k, n * c), vp = PadTime(v, n * c);
  const at::Tensor gp = PadTime(g.unsqueeze(-1), n * c).squeeze(-1);
  const at::Tensor bp = PadTime(beta.unsqueeze(-1), n * c).squeeze(-1);
  at::Tensor s = initial_state.defined() ? initial_state : ZeroState(k, v);
  const auto bool_opts = q.options().dtype(at::kBool);
  const at::Tensor causal = at::ones({c, c}, bool_opts).tril();        // s <= t
  const at::Tensor strict = at::ones({c, c}, bool_opts).tril(-1);      // s < t
  const at::Tensor eye = at::eye(c, q.options());
  // Within a chunk with start state S0 and cumulative log decay b_t, the state is
  //   S_t = e^{b_t} S0 + sum_{s<=t} e^{b_t - b_s} k_s w_s^T,
  // where the pseudo-values w solve the unit lower-triangular system
  //   w_t + beta_t sum_{s<t} e^{b_t - b_s} (k_t.k_s) w_s = beta_t (v_t - e^{b_t} S0^T k_t).
  // Everything that does not involve S0 is computed for all chunks at once ([B, H, N, C, .]);
  // only the state recurrence runs chunk by chunk (few ops per chunk: what autograd and the CPU
  // pay for per op dominates at training sequence lengths).
  const int64_t bsz = q.size(0), h = q.size(1), dv = v.size(-1), dk = k.size(-1);
  auto chunks = [&](const at::Tensor& x) { return x.reshape({bsz, h, n, c, x.size(-1)}); };
  const at::Tensor qc = chunks(qp), kc = chunks(kp), vc = chunks(vp);       // [B, H, N, C, D]
  const at::Tensor bc = bp.reshape({bsz, h, n, c, 1});                      // beta
  const at::Tensor b = gp.reshape({bsz, h, n, c}).cumsum(-1);              // [B, H, N, C]
  const at::Tensor diff = b.unsqueeze(-1) - b.unsqueeze(-2);               // [B, H, N, C(t), C(s)]
  const at::Tensor decay =
      diff.masked_fill(causal.logical_not(), -std::numeric_limits<double>::infinity()).exp();
  const at::Tensor kk = at::matmul(kc, kc.transpose(-1, -2));               // [B, H, N, C, C]
  const at::Tensor lower = (bc * decay * kk).masked_fill(strict.logical_not(), 0.0);
  const at::Tensor system = lower + eye;                                    // unit lower triangular
  const at::Tensor gamma = b.exp().unsqueeze(-1);                           // [B, H, N, C, 1]
  const at::Tensor rhs = at::cat({bc * vc, bc * gamma * kc}, -1);           // [B, H, N, C, V + K]
  const at::Tensor sol = at::linalg_solve_triangular(system, rhs, /*upper=*/false,
                                                     /*left=*/true, /*unitriangular=*/true);
  const at::Tensor u = sol.narrow(-1, 0, dv), wk = sol.narrow(-1, dv, dk);
  const at::Tensor qk = at::matmul(qc, kc.transpose(-1, -2)) * decay;      // [B, H, N, C, C]
  const at::Tensor qg = qc * gamma;                                         // [B, H, N, C, K]
  const at::Tensor b_last = b.narrow(-1, c - 1, 1);                         // [B, H, N, 1]
  const at::Tensor k_decayed_t =
      (kc * (b_last - b).exp().unsqueeze(-1)).transpose(-1, -2);            // [B, H, N, K, C]
  const at::Tensor state_decay = b_last.exp().unsqueeze(-1);                // [B, H, N, 1, 1]
  std::vector<at::Tensor> outs;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor w = u.select(2, i) - at::matmul(wk.select(2, i), s);   // [B, H, C, V]
    outs.push_back(at::matmul(qg.select(2, i), s) + at::matmul(qk.select(2, i), w));
    s = s * state_decay.select(2, i) + at::matmul(k_decayed_t.select(2, i), w);
  }
  return {(at::cat(outs, 2) * scale).narrow(2, 0, t), s};
}

GatedDeltaChunkedGradients GatedDeltaChunkedBackwardReference(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
    const at::Tensor& beta, double scale, const at::Tensor& initial_state,
    const at::Tensor& d_output, const at::Tensor& d_final_state, int64_t chunk_size) {
  CheckQkv(q, k, v, "GatedDeltaChunkedBackward");
  TORCH_CHECK(g.sizes() == q.sizes().slice(0, 3) && beta.sizes() == g.sizes(),
              "GatedDeltaChunkedBackward: g and beta must be [B, H, T]");
  TORCH_CHECK(d_output.sizes() == v.sizes(), "GatedDeltaChunkedBackward: d_output must match v");
  TORCH_CHECK(chunk_size > 0, "GatedDeltaChunkedBackward: chunk_size must be positive");
  const int64_t t = q.size(2), c = chunk_size, n = (t + c - 1) / c;
  const int64_t bsz = q.size(0), h = q.size(1);
  const at::Tensor zero_state = ZeroState(k, v);
  if (n == 0) {
    return {at::zeros_like(q),    at::zeros_like(k),
            at::zeros_like(v),    at::zeros_like(g),
            at::zeros_like(beta), d_final_state.defined() ? d_final_state : zero_state};
  }
  // [B, H, N, C, D] views of the zero-padded inputs (k = v = 0, beta = g = 0 past the end: the
  // padding changes no output, state or gradient of a real token).
  auto chunks = [&](const at::Tensor& x) {
    return PadTime(x, n * c).reshape({bsz, h, n, c, x.size(-1)});
  };
  const at::Tensor qc = chunks(q), kc = chunks(k), vc = chunks(v), dc = chunks(d_output);
  const at::Tensor bt = chunks(beta.unsqueeze(-1));        // [B, H, N, C, 1]
  const at::Tensor b = chunks(g.unsqueeze(-1)).cumsum(3);  // [B, H, N, C, 1] log decay since start
  const at::Tensor b_last = b.narrow(3, c - 1, 1);         // [B, H, N, 1, 1]
  const at::Tensor gamma = b.exp(), to_end = (b_last - b).exp(), decay = b_last.exp();
  const auto bool_opts = q.options().dtype(at::kBool);
  const at::Tensor causal = at::ones({c, c}, bool_opts).tril();    // s <= t
  const at::Tensor strict = at::ones({c, c}, bool_opts).tril(-1);  // s < t
  const at::Tensor m = (b - b.transpose(-1, -2))
                           .masked_fill(causal.logical_not(),
                                        -std::numeric_limits<double>::infinity())
                           .exp();  // M [B, H, N, C, C]
  const at::Tensor lm =
      (at::matmul(kc, kc.transpose(-1, -2)) * m).masked_fill(strict.logical_not(), 0.0);  // Lm
  const at::Tensor lower = bt * lm;                               // L = diag(beta) Lm
  const at::Tensor system = lower + at::eye(c, q.options());      // I + L
  const at::Tensor a = at::matmul(qc, kc.transpose(-1, -2)) * m;  // A (0 above the diagonal)
  const at::Tensor ke = kc * to_end;                              // diag(e) K
  const at::Tensor qg = qc * gamma, kbg = kc * (bt * gamma);
  // Tinv applied to the state-free parts: W = U - Wk S0.
  const at::Tensor sol = at::linalg_solve_triangular(system, at::cat({bt * vc, kbg}, -1),
                                                     /*upper=*/false, /*left=*/true,
                                                     /*unitriangular=*/true);
  const at::Tensor u = sol.narrow(-1, 0, v.size(-1)), wk = sol.narrow(-1, v.size(-1), k.size(-1));

  // States at every chunk start, and the pseudo-values W of every chunk.
  std::vector<at::Tensor> starts, ws;
  at::Tensor s = initial_state.defined() ? initial_state : zero_state;
  for (int64_t i = 0; i < n; ++i) {
    starts.push_back(s);
    ws.push_back(u.select(2, i) - at::matmul(wk.select(2, i), s));
    s = s * decay.select(2, i) + at::matmul(ke.select(2, i).transpose(-1, -2), ws.back());
  }
  const at::Tensor s0 = at::stack(starts, 2), w = at::stack(ws, 2);  // [B,H,N,K,V], [B,H,N,C,V]

  // State gradients at every chunk end, in reverse: dS0 = e^b_C dS + scale (gamma Q)^T dO
  // - (beta gamma K)^T Tinv^T (scale A^T dO + diag(e) K dS), where (beta gamma K)^T Tinv^T = Wk^T.
  const at::Tensor from_do =
      at::matmul(qg.transpose(-1, -2), dc) * scale -
      at::matmul(wk.transpose(-1, -2), at::matmul(a.transpose(-1, -2), dc)) * scale;
  std::vector<at::Tensor> ends(n);
  at::Tensor ds = d_final_state.defined() ? d_final_state : zero_state;
  for (int64_t i = n - 1; i >= 0; --i) {
    ends[i] = ds;
    ds = ds * decay.select(2, i) + from_do.select(2, i) -
         at::matmul(wk.select(2, i).transpose(-1, -2), at::matmul(ke.select(2, i), ds));
  }
  const at::Tensor ds_end = at::stack(ends, 2);  // [B, H, N, K, V]

  // Every chunk's gradients at once.
  const at::Tensor dw = at::matmul(a.transpose(-1, -2), dc) * scale + at::matmul(ke, ds_end);
  const at::Tensor dr = at::linalg_solve_triangular(system.transpose(-1, -2), dw, /*upper=*/true,
                                                    /*left=*/true, /*unitriangular=*/true);
  const at::Tensor da =
      (at::matmul(dc, w.transpose(-1, -2)) * scale).masked_fill(causal.logical_not(), 0.0);
  const at::Tensor dl =
      (-at::matmul(dr, w.transpose(-1, -2))).masked_fill(strict.logical_not(), 0.0);
  const at::Tensor e = gamma * at::matmul(dr, s0.transpose(-1, -2));            // [B,H,N,C,K]
  const at::Tensor dq0 = gamma * at::matmul(dc, s0.transpose(-1, -2)) * scale;  // via S0
  const at::Tensor dk0 = to_end * at::matmul(w, ds_end.transpose(-1, -2));      // via S_end
  const at::Tensor dqk = da * m;                                                // dA * M
  const at::Tensor dkk = dl * bt * m;                                           // D
  const at::Tensor dq = dq0 + at::matmul(dqk, kc);
  const at::Tensor dk = dk0 - bt * e + at::matmul(dqk.transpose(-1, -2), qc) +
                        at::matmul(dkk + dkk.transpose(-1, -2), kc);
  const at::Tensor dv = bt * dr;
  const at::Tensor dbeta = (vc * dr).sum(-1) - (kc * e).sum(-1) + (dl * lm).sum(-1);  // [B,H,N,C]
  // Gradient with respect to b_t (the decays' exponents), then dg by the reverse cumulative sum.
  const at::Tensor z = (dl * lower + da * a).masked_fill(strict.logical_not(), 0.0);
  const at::Tensor k_dk0 = (kc * dk0).sum(-1);  // [B, H, N, C]
  at::Tensor db =
      (qc * dq0).sum(-1) - (bt.squeeze(-1) * (kc * e).sum(-1)) - k_dk0 + z.sum(-1) - z.sum(-2);
  const at::Tensor at_end =
      k_dk0.sum(-1, true) + decay.squeeze(-1) * (s0 * ds_end).sum({-2, -1}).unsqueeze(-1);
  db = db + at::cat({at::zeros_like(db.narrow(-1, 0, c - 1)), at_end}, -1);
  const at::Tensor dg = db.flip(-1).cumsum(-1).flip(-1);
  auto unchunk = [&](const at::Tensor& x) {
    return x.reshape({bsz, h, n * c, x.size(-1)}).narrow(2, 0, t);
  };
  auto unchunk_head = [&](const at::Tensor& x) {
    return x.reshape({bsz, h, n * c}).narrow(2, 0, t);
  };
  return {unchunk(dq), unchunk(dk), unchunk(dv), unchunk_head(dg), unchunk_head(dbeta), ds};
}

void CheckCuSeqlens(const std::vector<int64_t>& cu_seqlens, int64_t total_tokens, const char* op) {
  TORCH_CHECK(cu_seqlens.size() >= 2, op, ": cu_seqlens must hold N + 1 >= 2 offsets (got ",
              cu_seqlens.size(), ")");
  TORCH_CHECK(cu_seqlens.front() == 0, op, ": cu_seqlens[0] must be 0 (got ", cu_seqlens.front(),
              ")");
  for (size_t i = 1; i < cu_seqlens.size(); ++i) {
    TORCH_CHECK(cu_seqlens[i] >= cu_seqlens[i - 1], op,
                ": cu_seqlens must not decrease (cu_seqlens[", i, "] = ", cu_seqlens[i],
                " < cu_seqlens[", i - 1, "] = ", cu_seqlens[i - 1], ")");
  }
  TORCH_CHECK(cu_seqlens.back() == total_tokens, op, ": cu_seqlens[", cu_seqlens.size() - 1,
              "] = ", cu_seqlens.back(), " must equal the packed length T = ", total_tokens);
}

namespace {

// Checks of a packed batch beyond the per-operator ones: B = 1, valid offsets, and a state
// argument (`name`) undefined or [N, H, K, V].
void CheckVarlen(const at::Tensor& q, const at::Tensor& v, const at::Tensor& state,
                 const char* name, const std::vector<int64_t>& cu_seqlens, const char* op) {
  TORCH_CHECK(q.size(0) == 1, op, ": packed sequences need q, k, v of batch 1 (got ", q.size(0),
              ")");
  CheckCuSeqlens(cu_seqlens, q.size(2), op);
  const int64_t n = static_cast<int64_t>(cu_seqlens.size()) - 1;
  TORCH_CHECK(
      !state.defined() || state.sizes() == at::IntArrayRef({n, q.size(1), q.size(3), v.size(3)}),
      op, ": ", name, " must be [N, H, K, V] = [", n, ", ", q.size(1), ", ", q.size(3), ", ",
      v.size(3), "] (got ", state.sizes(), ")");
}

// Sequence i's slice of [1, H, T, ...] tensors, or of [N, H, K, V] states (undefined stays so).
at::Tensor SeqTokens(const at::Tensor& x, const std::vector<int64_t>& cu, size_t i) {
  return x.narrow(2, cu[i], cu[i + 1] - cu[i]);
}
at::Tensor SeqState(const at::Tensor& s, size_t i) {
  return s.defined() ? s.narrow(0, static_cast<int64_t>(i), 1) : at::Tensor();
}
// [1, H, 0, dim]: an empty sequence's slice.
at::Tensor NoTokens(const at::Tensor& like, int64_t dim) {
  return at::zeros({1, like.size(1), 0, dim}, like.options());
}

}  // namespace

LinearAttentionOutput GlaChunkedVarlen(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& g, double scale,
                                       const at::Tensor& initial_state,
                                       const std::vector<int64_t>& cu_seqlens, int64_t chunk_size) {
  CheckQkv(q, k, v, "GlaChunkedVarlen");
  TORCH_CHECK(g.sizes() == k.sizes(), "GlaChunkedVarlen: g must match k");
  TORCH_CHECK(chunk_size > 0, "GlaChunkedVarlen: chunk_size must be positive");
  CheckVarlen(q, v, initial_state, "initial_state", cu_seqlens, "GlaChunkedVarlen");
#ifdef HYB_WITH_CUDA
  const int64_t n = static_cast<int64_t>(cu_seqlens.size()) - 1;
  if (cuda::GlaChunkedVarlenSupported(q, k, v, g, initial_state, n)) {
    if (NeedsGrad({q, k, v, g, initial_state})) {
      return cuda::GlaChunkedVarlenWithGrad(q, k, v, g, scale, initial_state, cu_seqlens);
    }
    return cuda::GlaChunkedVarlen(q, k, v, g, scale, initial_state, cu_seqlens);
  }
#endif
  return GlaChunkedVarlenReference(q, k, v, g, scale, initial_state, cu_seqlens, chunk_size);
}

LinearAttentionOutput GlaChunkedVarlenReference(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const at::Tensor& g,
                                                double scale, const at::Tensor& initial_state,
                                                const std::vector<int64_t>& cu_seqlens,
                                                int64_t chunk_size) {
  CheckQkv(q, k, v, "GlaChunkedVarlen");
  TORCH_CHECK(g.sizes() == k.sizes(), "GlaChunkedVarlen: g must match k");
  CheckVarlen(q, v, initial_state, "initial_state", cu_seqlens, "GlaChunkedVarlen");
  std::vector<at::Tensor> outs, finals;
  for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) {
    const at::Tensor s0 = SeqState(initial_state, i);
    if (cu_seqlens[i + 1] == cu_seqlens[i]) {
      outs.push_back(NoTokens(v, v.size(3)));
      finals.push_back(s0.defined() ? s0 : ZeroState(k, v));
      continue;
    }
    LinearAttentionOutput r = GlaChunkedReference(
        SeqTokens(q, cu_seqlens, i), SeqTokens(k, cu_seqlens, i), SeqTokens(v, cu_seqlens, i),
        SeqTokens(g, cu_seqlens, i), scale, s0, chunk_size);
    outs.push_back(r.output);
    finals.push_back(r.final_state);
  }
  return {at::cat(outs, 2), at::cat(finals, 0)};
}

GlaChunkedGradients GlaChunkedVarlenBackwardReference(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
    double scale, const at::Tensor& initial_state, const at::Tensor& d_output,
    const at::Tensor& d_final_state, const std::vector<int64_t>& cu_seqlens, int64_t chunk_size) {
  CheckQkv(q, k, v, "GlaChunkedVarlenBackward");
  TORCH_CHECK(g.sizes() == k.sizes(), "GlaChunkedVarlenBackward: g must match k");
  TORCH_CHECK(d_output.sizes() == v.sizes(), "GlaChunkedVarlenBackward: d_output must match v");
  CheckVarlen(q, v, initial_state, "initial_state", cu_seqlens, "GlaChunkedVarlenBackward");
  CheckVarlen(q, v, d_final_state, "d_final_state", cu_seqlens, "GlaChunkedVarlenBackward");
  std::vector<at::Tensor> dq, dk, dv, dg, ds0;
  for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) {
    const at::Tensor ds1 = SeqState(d_final_state, i);
    if (cu_seqlens[i + 1] == cu_seqlens[i]) {
      dq.push_back(NoTokens(q, q.size(3)));
      dk.push_back(NoTokens(k, k.size(3)));
      dv.push_back(NoTokens(v, v.size(3)));
      dg.push_back(NoTokens(g, g.size(3)));
      ds0.push_back(ds1.defined() ? ds1 : ZeroState(k, v));
      continue;
    }
    GlaChunkedGradients r = GlaChunkedBackwardReference(
        SeqTokens(q, cu_seqlens, i), SeqTokens(k, cu_seqlens, i), SeqTokens(v, cu_seqlens, i),
        SeqTokens(g, cu_seqlens, i), scale, SeqState(initial_state, i),
        SeqTokens(d_output, cu_seqlens, i), ds1, chunk_size);
    dq.push_back(r.dq);
    dk.push_back(r.dk);
    dv.push_back(r.dv);
    dg.push_back(r.dg);
    ds0.push_back(r.d_initial_state);
  }
  return {at::cat(dq, 2), at::cat(dk, 2), at::cat(dv, 2), at::cat(dg, 2), at::cat(ds0, 0)};
}

LinearAttentionOutput GatedDeltaChunkedVarlen(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const at::Tensor& g,
                                              const at::Tensor& beta, double scale,
                                              const at::Tensor& initial_state,
                                              const std::vector<int64_t>& cu_seqlens,
                                              int64_t chunk_size) {
  CheckQkv(q, k, v, "GatedDeltaChunkedVarlen");
  TORCH_CHECK(g.sizes() == q.sizes().slice(0, 3) && beta.sizes() == g.sizes(),
              "GatedDeltaChunkedVarlen: g and beta must be [1, H, T]");
  TORCH_CHECK(chunk_size > 0, "GatedDeltaChunkedVarlen: chunk_size must be positive");
  CheckVarlen(q, v, initial_state, "initial_state", cu_seqlens, "GatedDeltaChunkedVarlen");
#ifdef HYB_WITH_CUDA
  // As GatedDeltaChunked: the chunk-parallel kernels where they apply, the sequential ones for
  // the rest.
  const int64_t n = static_cast<int64_t>(cu_seqlens.size()) - 1;
  const bool grad = NeedsGrad({q, k, v, g, beta, initial_state});
  if (cuda::GatedDeltaChunkedFastVarlenSupported(q, k, v, g, beta, initial_state, n, !grad)) {
    if (grad) {
      return cuda::GatedDeltaChunkedFastVarlenWithGrad(q, k, v, g, beta, scale, initial_state,
                                                       cu_seqlens);
    }
    return cuda::GatedDeltaChunkedFastVarlen(q, k, v, g, beta, scale, initial_state, cu_seqlens);
  }
  if (cuda::GatedDeltaChunkedVarlenSupported(q, k, v, g, beta, initial_state, n)) {
    if (grad) {
      return cuda::GatedDeltaChunkedVarlenWithGrad(q, k, v, g, beta, scale, initial_state,
                                                   cu_seqlens);
    }
    return cuda::GatedDeltaChunkedVarlen(q, k, v, g, beta, scale, initial_state, cu_seqlens);
  }
#endif
  return GatedDeltaChunkedVarlenReference(q, k, v, g, beta, scale, initial_state, cu_seqlens,
                                          chunk_size);
}

LinearAttentionOutput GatedDeltaChunkedVarlenReference(const at::Tensor& q, const at::Tensor& k,
                                                       const at::Tensor& v, const at::Tensor& g,
                                                       const at::Tensor& beta, double scale,
                                                       const at::Tensor& initial_state,
                                                       const std::vector<int64_t>& cu_seqlens,
                                                       int64_t chunk_size) {
  CheckQkv(q, k, v, "GatedDeltaChunkedVarlen");
  TORCH_CHECK(g.sizes() == q.sizes().slice(0, 3) && beta.sizes() == g.sizes(),
              "GatedDeltaChunkedVarlen: g and beta must be [1, H, T]");
  CheckVarlen(q, v, initial_state, "initial_state", cu_seqlens, "GatedDeltaChunkedVarlen");
  std::vector<at::Tensor> outs, finals;
  for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) {
    const at::Tensor s0 = SeqState(initial_state, i);
    if (cu_seqlens[i + 1] == cu_seqlens[i]) {
      outs.push_back(NoTokens(v, v.size(3)));
      finals.push_back(s0.defined() ? s0 : ZeroState(k, v));
      continue;
    }
    LinearAttentionOutput r = GatedDeltaChunkedReference(
        SeqTokens(q, cu_seqlens, i), SeqTokens(k, cu_seqlens, i), SeqTokens(v, cu_seqlens, i),
        SeqTokens(g, cu_seqlens, i), SeqTokens(beta, cu_seqlens, i), scale, s0, chunk_size);
    outs.push_back(r.output);
    finals.push_back(r.final_state);
  }
  return {at::cat(outs, 2), at::cat(finals, 0)};
}

GatedDeltaChunkedGradients GatedDeltaChunkedVarlenBackwardReference(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
    const at::Tensor& beta, double scale, const at::Tensor& initial_state,
    const at::Tensor& d_output, const at::Tensor& d_final_state,
    const std::vector<int64_t>& cu_seqlens, int64_t chunk_size) {
  CheckQkv(q, k, v, "GatedDeltaChunkedVarlenBackward");
  TORCH_CHECK(g.sizes() == q.sizes().slice(0, 3) && beta.sizes() == g.sizes(),
              "GatedDeltaChunkedVarlenBackward: g and beta must be [1, H, T]");
  TORCH_CHECK(d_output.sizes() == v.sizes(),
              "GatedDeltaChunkedVarlenBackward: d_output must match v");
  CheckVarlen(q, v, initial_state, "initial_state", cu_seqlens, "GatedDeltaChunkedVarlenBackward");
  CheckVarlen(q, v, d_final_state, "d_final_state", cu_seqlens, "GatedDeltaChunkedVarlenBackward");
  std::vector<at::Tensor> dq, dk, dv, dg, dbeta, ds0;
  for (size_t i = 0; i + 1 < cu_seqlens.size(); ++i) {
    const at::Tensor ds1 = SeqState(d_final_state, i);
    if (cu_seqlens[i + 1] == cu_seqlens[i]) {
      dq.push_back(NoTokens(q, q.size(3)));
      dk.push_back(NoTokens(k, k.size(3)));
      dv.push_back(NoTokens(v, v.size(3)));
      dg.push_back(at::zeros({1, g.size(1), 0}, g.options()));
      dbeta.push_back(at::zeros({1, beta.size(1), 0}, beta.options()));
      ds0.push_back(ds1.defined() ? ds1 : ZeroState(k, v));
      continue;
    }
    GatedDeltaChunkedGradients r = GatedDeltaChunkedBackwardReference(
        SeqTokens(q, cu_seqlens, i), SeqTokens(k, cu_seqlens, i), SeqTokens(v, cu_seqlens, i),
        SeqTokens(g, cu_seqlens, i), SeqTokens(beta, cu_seqlens, i), scale,
        SeqState(initial_state, i), SeqTokens(d_output, cu_seqlens, i), ds1, chunk_size);
    dq.push_back(r.dq);
    dk.push_back(r.dk);
    dv.push_back(r.dv);
    dg.push_back(r.dg);
    dbeta.push_back(r.dbeta);
    ds0.push_back(r.d_initial_state);
  }
  return {at::cat(dq, 2), at::cat(dk, 2),    at::cat(dv, 2),
          at::cat(dg, 2), at::cat(dbeta, 2), at::cat(ds0, 0)};
}

}  // namespace hyb::kernels
