// write_tiny_job DIR [OVERRIDES.json]: writes the test suite's tiny job (a 2-layer random teacher,
// its tokenizer, distillation data, a generate task and job.json with paths relative to DIR)
// into DIR, for tests that drive the binary from outside a C++ test (tests/k8s/check_manifests.py).
#include <cstdio>
#include <exception>

#include "hyb/common/json_util.h"
#include "worker/test_model.h"

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: write_tiny_job DIR [OVERRIDES.json]\n");
    return 2;
  }
  try {
    hyb::Json overrides = hyb::Json::object();
    if (argc == 3) {
      auto text = hyb::ReadFileToString(argv[2]);
      if (!text.ok()) throw std::runtime_error(text.status().message());
      overrides = hyb::Json::parse(*text);
    }
    hyb::testing::WriteTinyJob(argv[1], overrides);
    std::printf("%s/job.json\n", argv[1]);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "write_tiny_job: %s\n", e.what());
    return 1;
  }
}
