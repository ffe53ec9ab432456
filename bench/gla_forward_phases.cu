// Standalone timing of the chunked GLA forward (LaunchGlaChunked) on random inputs, for
// bench/gla_forward_phases.py: it compiles this file against a copy of kernels/cuda/gla_chunked.cu
// (a git revision, or one with a phase compiled out) given as HYB_GLA_SOURCE, without LibTorch.
//
//   gla_forward_phases <tokens> <batch> <label>
//
// 16 heads, head dims 128, q / v ~ N(0, 1), k ~ N(0, 1/128), g = logsigmoid(N(0, 1)) / 16 (as the
// project's GLA). Prints one line: the label, the mean of 70 calls after 10 warm-up calls (CUDA
// events), and FNV-1a hashes of o and of the final state after one call, which tell whether two
// builds compute bit-identical results.
#include HYB_GLA_SOURCE

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

uint64_t Fnv(const std::vector<unsigned char>& x) {
  uint64_t h = 1469598103934665603ull;
  for (const unsigned char c : x) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Times the forward at T tokens x B sequences and prints its line (see the top).
cudaError_t Run(int64_t T, int64_t B, const char* label) {
  using namespace hyb::kernels::cuda;
  const int64_t H = 16;
  const int K = 128, V = 128;
  cudaDeviceProp prop;
  HYB_CUDA_TRY(cudaGetDeviceProperties(&prop, 0));
  const int64_t n = B * H * T;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<__nv_bfloat16> hq(n * K), hk(n * K), hv(n * V);
  std::vector<float> hg(n * K);
  for (auto& x : hq) x = __float2bfloat16(normal(rng));
  for (auto& x : hk) x = __float2bfloat16(normal(rng) / std::sqrt(128.f));
  for (auto& x : hv) x = __float2bfloat16(normal(rng));
  for (auto& x : hg) {
    const float z = normal(rng);  // logsigmoid(z) / 16
    x = (z < 0 ? z - std::log1p(std::exp(z)) : -std::log1p(std::exp(-z))) / 16.f;
  }
  void *q, *k, *v, *o, *ws = nullptr;
  float *g, *fs;
  HYB_CUDA_TRY(cudaMalloc(&q, n * K * 2));
  HYB_CUDA_TRY(cudaMalloc(&k, n * K * 2));
  HYB_CUDA_TRY(cudaMalloc(&v, n * V * 2));
  HYB_CUDA_TRY(cudaMalloc(&o, n * V * 2));
  HYB_CUDA_TRY(cudaMalloc(&g, n * K * 4));
  HYB_CUDA_TRY(cudaMalloc(&fs, B * H * K * V * 4));
  HYB_CUDA_TRY(cudaMemcpy(q, hq.data(), n * K * 2, cudaMemcpyHostToDevice));
  HYB_CUDA_TRY(cudaMemcpy(k, hk.data(), n * K * 2, cudaMemcpyHostToDevice));
  HYB_CUDA_TRY(cudaMemcpy(v, hv.data(), n * V * 2, cudaMemcpyHostToDevice));
  HYB_CUDA_TRY(cudaMemcpy(g, hg.data(), n * K * 4, cudaMemcpyHostToDevice));
  GlaChunkedParams p;
  p.q = q;
  p.k = k;
  p.v = v;
  p.g = g;
  p.o = o;
  p.final_state = fs;
  p.batch = B;
  p.heads = H;
  p.tokens = T;
  p.key_dim = K;
  p.value_dim = V;
  p.scale = 1.f / std::sqrt(128.f);
  p.num_sms = prop.multiProcessorCount;
  const size_t ws_bytes = GlaChunkedWorkspaceBytes(p);
  if (ws_bytes > 0) {
    HYB_CUDA_TRY(cudaMalloc(&ws, ws_bytes));
    HYB_CUDA_TRY(cudaMemset(ws, 0, ws_bytes));  // (read as start states when pass 1 is compiled out)
  }
  p.workspace = ws;

  HYB_CUDA_TRY(LaunchGlaChunked(p, nullptr));
  HYB_CUDA_TRY(cudaDeviceSynchronize());
  std::vector<unsigned char> ho(n * V * 2), hs(B * H * K * V * 4);
  HYB_CUDA_TRY(cudaMemcpy(ho.data(), o, ho.size(), cudaMemcpyDeviceToHost));
  HYB_CUDA_TRY(cudaMemcpy(hs.data(), fs, hs.size(), cudaMemcpyDeviceToHost));

  for (int i = 0; i < 10; ++i) HYB_CUDA_TRY(LaunchGlaChunked(p, nullptr));
  cudaEvent_t e0, e1;
  HYB_CUDA_TRY(cudaEventCreate(&e0));
  HYB_CUDA_TRY(cudaEventCreate(&e1));
  constexpr int kCalls = 70;
  HYB_CUDA_TRY(cudaEventRecord(e0));
  for (int i = 0; i < kCalls; ++i) HYB_CUDA_TRY(LaunchGlaChunked(p, nullptr));
  HYB_CUDA_TRY(cudaEventRecord(e1));
  HYB_CUDA_TRY(cudaEventSynchronize(e1));
  float ms = 0.f;
  HYB_CUDA_TRY(cudaEventElapsedTime(&ms, e0, e1));
  std::printf("%s T=%lld B=%lld segment_chunks=%d %.4f ms o=%016llx state=%016llx\n", label,
              static_cast<long long>(T), static_cast<long long>(B),
              GlaSegmentChunks(B * H, T, p.num_sms), ms / kCalls,
              static_cast<unsigned long long>(Fnv(ho)), static_cast<unsigned long long>(Fnv(hs)));
  return cudaSuccess;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s <tokens> <batch> <label>\n", argv[0]);
    return 2;
  }
  const cudaError_t err = Run(std::atoll(argv[1]), std::atoll(argv[2]), argv[3]);
  if (err != cudaSuccess) {
    const auto& site = hyb::kernels::cuda::LastCudaErrorSite();
    std::fprintf(stderr, "%s: %s (%s:%d)\n", site.statement, cudaGetErrorString(err), site.file,
                 site.line);
    return 1;
  }
  return 0;
}
