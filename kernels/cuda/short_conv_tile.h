// The per-thread work of the short convolution kernels (short_conv.cu): the forward and the
// backward of one channel vector along one tile of time steps, with a sliding window of the last
// K inputs in registers. Torch-free and free of the CUDA runtime, so that the host tests run the
// same code over every tile (tests/kernels/short_conv_test.cc). Memory goes through `io`:
//   io.Input(s, v)    v = inputs s of the vector (s < 0: the previous inputs, column K-1+s)
//   io.Output(t, y)   y = the fp32 sums of step t (rounding and silu are io's)
//   io.DOut(s, v)     v = the incoming gradient of step s (s < T)
//   io.Sigmoid(v)     the logistic function
//   io.DInput(t, v)   v = the gradient of input t
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define HYB_SHORT_CONV_HD __host__ __device__ __forceinline__
#define HYB_SHORT_CONV_UNROLL _Pragma("unroll")
#else
#define HYB_SHORT_CONV_HD inline
#define HYB_SHORT_CONV_UNROLL
#endif

namespace hyb::kernels::cuda {

// win[i] = win[i + 1]: the window one step on.
template <int K, int N, typename F>
HYB_SHORT_CONV_HD void ShiftShortConvWindow(F (&win)[K][N]) {
  HYB_SHORT_CONV_UNROLL
  for (int i = 0; i + 1 < K; ++i) {
    HYB_SHORT_CONV_UNROLL
    for (int k = 0; k < N; ++k) win[i][k] = win[i + 1][k];
  }
}

// y = sum_j w[j] * win[j]: w[j][k] is tap j of channel k; win[j] holds input t + j - (K-1) for
// output t.
template <int K, int N, typename F>
HYB_SHORT_CONV_HD void ShortConvSums(const F (&w)[K][N], const F (&win)[K][N], F (&y)[N]) {
  HYB_SHORT_CONV_UNROLL
  for (int k = 0; k < N; ++k) {
    F acc = 0;
    HYB_SHORT_CONV_UNROLL
    for (int j = 0; j < K; ++j) acc += w[j][k] * win[j][k];
    y[k] = acc;
  }
}

// Forward of steps [t0, t_end). The inputs of kSteps steps are loaded before any is used (the
// loads are in flight together). On return win[0..K-2] holds inputs t_end-(K-1) .. t_end-1 (with
// t_end = T: the new decoding cache).
template <int K, int N, int kSteps, typename F, class Io>
HYB_SHORT_CONV_HD void ShortConvForwardTile(const F (&w)[K][N], int64_t t0, int64_t t_end, Io& io,
                                            F (&win)[K][N]) {
  HYB_SHORT_CONV_UNROLL
  for (int i = 0; i + 1 < K; ++i) io.Input(t0 - (K - 1) + i, win[i]);
  for (int64_t base = t0; base < t_end; base += kSteps) {
    F in[kSteps][N];
    HYB_SHORT_CONV_UNROLL
    for (int i = 0; i < kSteps; ++i) {
      if (base + i < t_end) io.Input(base + i, in[i]);
    }
    HYB_SHORT_CONV_UNROLL
    for (int i = 0; i < kSteps; ++i) {
      if (base + i >= t_end) break;
      HYB_SHORT_CONV_UNROLL
      for (int k = 0; k < N; ++k) win[K - 1][k] = in[i][k];
      F y[N];
      ShortConvSums<K, N, F>(w, win, y);
      io.Output(base + i, y);
      ShiftShortConvWindow<K, N, F>(win);
    }
  }
}

// Backward of steps [t0, t_end) of a sequence of `time` steps: writes d_input for those steps and
// adds the steps' weight-gradient terms to d_w (d_w[j][k] += d_y[t] * input[t + j - (K-1)]).
// Step s computes d_y[s] (zero past T; past the tile only for the d_input of the tile's last K-1
// steps), adds its d_w terms when s is in the tile, and completes d_input[s - (K-1)]:
//   d_input[t] = sum_j w[j] * d_y[t + K-1 - j].
// The incoming gradients and inputs of kSteps steps are loaded before any is used.
template <int K, int N, int kSteps, bool kSilu, typename F, class Io>
HYB_SHORT_CONV_HD void ShortConvBackwardTile(const F (&w)[K][N], int64_t t0, int64_t t_end,
                                             int64_t time, Io& io, F (&d_w)[K][N]) {
  F win[K][N];  // inputs s - (K-1) .. s for step s
  F dyw[K][N];  // d_y of steps s - (K-1) .. s
  HYB_SHORT_CONV_UNROLL
  for (int i = 0; i + 1 < K; ++i) {
    io.Input(t0 - (K - 1) + i, win[i]);
    HYB_SHORT_CONV_UNROLL
    for (int k = 0; k < N; ++k) dyw[i][k] = 0;  // steps before the tile: never read
  }
  const int64_t s_end = t_end + K - 1;
  for (int64_t base = t0; base < s_end; base += kSteps) {
    F d_outs[kSteps][N], ins[kSteps][N];
    HYB_SHORT_CONV_UNROLL
    for (int i = 0; i < kSteps; ++i) {
      const int64_t s = base + i;
      if (s < s_end && s < time) {
        io.DOut(s, d_outs[i]);
        if (kSilu || s < t_end) io.Input(s, ins[i]);  // for silu' and the tile's d_w terms
      }
    }
    HYB_SHORT_CONV_UNROLL
    for (int i = 0; i < kSteps; ++i) {
      const int64_t s = base + i;
      if (s >= s_end) break;
      F dy[N] = {};
      if (s < time) {
        HYB_SHORT_CONV_UNROLL
        for (int k = 0; k < N; ++k) dy[k] = d_outs[i][k];
        if (kSilu || s < t_end) {
          HYB_SHORT_CONV_UNROLL
          for (int k = 0; k < N; ++k) win[K - 1][k] = ins[i][k];
          if constexpr (kSilu) {
            F y[N];
            ShortConvSums<K, N, F>(w, win, y);
            HYB_SHORT_CONV_UNROLL
            for (int k = 0; k < N; ++k) {
              const F sig = io.Sigmoid(y[k]);
              dy[k] *= sig * (1 + y[k] * (1 - sig));
            }
          }
          if (s < t_end) {
            HYB_SHORT_CONV_UNROLL
            for (int j = 0; j < K; ++j) {
              HYB_SHORT_CONV_UNROLL
              for (int k = 0; k < N; ++k) d_w[j][k] += dy[k] * win[j][k];
            }
          }
          ShiftShortConvWindow<K, N, F>(win);
        }
      }
      HYB_SHORT_CONV_UNROLL
      for (int k = 0; k < N; ++k) dyw[K - 1][k] = dy[k];
      const int64_t t = s - (K - 1);
      if (t >= t0) {
        F du[N];
        HYB_SHORT_CONV_UNROLL
        for (int k = 0; k < N; ++k) {
          F acc = 0;
          HYB_SHORT_CONV_UNROLL
          for (int j = 0; j < K; ++j) acc += w[j][k] * dyw[K - 1 - j][k];
          du[k] = acc;
        }
        io.DInput(t, du);
      }
      ShiftShortConvWindow<K, N, F>(dyw);
    }
  }
}

}  // namespace hyb::kernels::cuda
