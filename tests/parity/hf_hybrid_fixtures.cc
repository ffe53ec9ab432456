// Writes tiny hybrid directories (every family x every mixer) and their inputs for the
// transformers round trip (tests/parity/hf_hybrid_parity.sh):
//   hf_hybrid_fixtures OUT_DIR
// OUT_DIR/<family>_<mixer>/ is an exported hybrid (layers 0 and 2 linear, layer 1 the teacher's
// softmax layer) with ids.safetensors ('input_ids' [2, 24]) and prompt.safetensors
// ('input_ids' [1, 6]); OUT_DIR/teachers/<family>/ holds the teachers they came from.
#include <sys/stat.h>
#include <torch/torch.h>

#include <iostream>
#include <stdexcept>
#include <string>

#include "hyb/worker/tensor_io.h"
#include "worker/hf_hybrid_fixture.h"
#include "worker/test_model.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: hf_hybrid_fixtures OUT_DIR (must not exist)\n";
    return 2;
  }
  const std::string out = argv[1];
  try {
    if (::mkdir(out.c_str(), 0755) != 0 || ::mkdir((out + "/teachers").c_str(), 0755) != 0) {
      throw std::runtime_error(out + ": cannot create (does it exist already?)");
    }
    uint64_t seed = 1;
    for (const char* family : {"llama", "qwen2", "qwen3", "mistral"}) {
      const std::string teacher = out + "/teachers/" + family;
      if (::mkdir(teacher.c_str(), 0755) != 0) throw std::runtime_error(teacher + ": mkdir");
      const auto spec = hyb::testing::HfFixtureTeacherSpec(family);
      hyb::testing::WriteTinyModel(teacher, spec, seed++);
      for (const char* mixer : {"gated_deltanet", "gla", "linear_elu"}) {
        const std::string dir = out + "/" + family + "_" + mixer;
        auto hybrid = hyb::testing::MakeNoisyHybrid(teacher, mixer, {0, 2}, seed++);
        const hyb::Status saved = hybrid->Save(dir);
        if (!saved.ok()) throw std::runtime_error(saved.ToString());
        auto gen = at::make_generator<at::CPUGeneratorImpl>(seed++);
        const auto ids = at::randint(0, spec.vocab, {2, 24}, gen, at::TensorOptions().dtype(at::kLong));
        hyb::Status s = hyb::worker::SaveTensors(dir + "/ids.safetensors", {{"input_ids", ids}});
        if (s.ok()) {
          s = hyb::worker::SaveTensors(dir + "/prompt.safetensors",
                                       {{"input_ids", ids.narrow(0, 0, 1).narrow(1, 0, 6).clone()}});
        }
        if (!s.ok()) throw std::runtime_error(s.ToString());
        std::cout << dir << "\n";
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "hf_hybrid_fixtures: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
