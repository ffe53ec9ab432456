// Timing of device work for the CUDA benches: the median over 7 batches of the mean time of
// `reps` back-to-back calls, after a warm-up batch, each batch ended by a device synchronise.
#pragma once

#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

namespace hyb::bench {

inline double TimeMs(const std::function<void()>& f, int reps) {
  for (int i = 0; i < reps; ++i) f();
  torch::cuda::synchronize();
  std::vector<double> ms;
  for (int batch = 0; batch < 7; ++batch) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) f();
    torch::cuda::synchronize();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() /
        reps);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace hyb::bench
