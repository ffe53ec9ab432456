// Exported directories carry transformers modeling code (modeling_hybridize.py + auto_map) and
// still load in hybridize with the same logits. The transformers side of the round trip runs on
// the GPU machine: tests/parity/hf_hybrid_parity.sh.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/torch.h>

#include <fstream>
#include <sstream>

#include "hyb/common/json_util.h"
#include "hyb/worker/decoder_model.h"
#include "hyb/worker/hf_remote_code.h"
#include "testing/temp_dir.h"
#include "worker/hf_hybrid_fixture.h"
#include "worker/test_model.h"

namespace hyb::worker {
namespace {

using hyb::testing::TempDir;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The repository root, from this file's path (CMake compiles sources by absolute path).
std::string RepoRoot() {
  const std::string self = __FILE__;
  return self.substr(0, self.rfind("/tests/worker/"));
}

TEST(HfExportTest, EmbeddedSourceIsTheRepositoryFile) {
  const std::string file = ReadAll(RepoRoot() + "/worker/python/" + kHfModelingFile);
  ASSERT_FALSE(file.empty());
  EXPECT_EQ(std::string(HfModelingSource()), file);
}

TEST(HfExportTest, AutoMapNamesClassesTheSourceDefines) {
  const std::string src(HfModelingSource());
  for (const char* family : {"llama", "qwen2", "qwen3", "mistral"}) {
    const Json m = HfAutoMap(family);
    ASSERT_TRUE(m.contains("AutoConfig")) << family;
    EXPECT_EQ(m["AutoConfig"], std::string("modeling_hybridize.") + HfConfigClass(family));
    EXPECT_EQ(m["AutoModelForCausalLM"],
              std::string("modeling_hybridize.") + HfCausalLmClass(family));
    EXPECT_NE(src.find("class " + HfConfigClass(family) + "("), std::string::npos) << family;
    EXPECT_NE(src.find(HfCausalLmClass(family) + " = _causal_lm_class(\"" + family + "\", " +
                       HfConfigClass(family) + ")"),
              std::string::npos)
        << family;
  }
  EXPECT_TRUE(HfAutoMap("gpt2").empty());
  EXPECT_EQ(HfCausalLmClass("gpt2"), "");
}

// Every mixer type on every family: Save writes the modeling file and auto_map, keeps model_type,
// and the directory reloads with identical logits.
TEST(HfExportTest, HybridExportCarriesModelingCodeAndReloadsExactly) {
  const at::Tensor ids = at::randint(0, 41, {2, 13}, at::TensorOptions().dtype(at::kLong));
  for (const char* family : {"llama", "qwen2", "qwen3", "mistral"}) {
    TempDir dir;
    ASSERT_EQ(::mkdir(dir.File("teacher").c_str(), 0755), 0);
    hyb::testing::WriteTinyModel(dir.File("teacher"), hyb::testing::HfFixtureTeacherSpec(family),
                                 7);
    for (const char* mixer : {"gated_deltanet", "gla", "linear_elu"}) {
      SCOPED_TRACE(std::string(family) + " " + mixer);
      auto hybrid =
          hyb::testing::MakeNoisyHybrid(dir.File("teacher"), mixer, {0, 2}, 11);
      const std::string out = dir.File(std::string("hybrid_") + mixer);
      ASSERT_TRUE(hybrid->Save(out).ok());

      EXPECT_EQ(ReadAll(out + "/" + kHfModelingFile), std::string(HfModelingSource()));
      auto config = Json::parse(ReadAll(out + "/config.json"));
      EXPECT_EQ(config["model_type"], family);
      EXPECT_EQ(config["auto_map"], HfAutoMap(family));
      EXPECT_EQ(config["architectures"], Json::array({HfCausalLmClass(family)}));
      EXPECT_EQ(config["layer_types"][0], "linear_attention");
      EXPECT_EQ(config["linear_attention"]["mixer"], mixer);

      auto reloaded = DecoderModel::Load(out, RuntimeOptions{});
      ASSERT_TRUE(reloaded.ok()) << reloaded.status().ToString();
      const at::Tensor want = *hybrid->Forward(ids);
      const at::Tensor got = *(*reloaded)->Forward(ids);
      EXPECT_EQ((got - want).abs().max().item<double>(), 0.0);
      // The perturbed mixers matter: the hybrid is not the teacher.
      auto teacher = DecoderModel::Load(dir.File("teacher"), RuntimeOptions{});
      ASSERT_TRUE(teacher.ok());
      EXPECT_GT(((*(*teacher)->Forward(ids)) - got).abs().max().item<double>(), 0.1);
    }
  }
}

// A model with no linear layer is exported the same way (the teacher itself travels too).
TEST(HfExportTest, TeacherExportAlsoCarriesModelingCode) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.File("teacher").c_str(), 0755), 0);
  hyb::testing::WriteTinyModel(dir.File("teacher"), hyb::testing::HfFixtureTeacherSpec("qwen2"), 3);
  auto model = DecoderModel::Load(dir.File("teacher"), RuntimeOptions{});
  ASSERT_TRUE(model.ok());
  ASSERT_TRUE((*model)->Save(dir.File("out")).ok());
  auto config = Json::parse(ReadAll(dir.File("out/config.json")));
  EXPECT_EQ(config["auto_map"], HfAutoMap("qwen2"));
  EXPECT_FALSE(config.contains("linear_attention"));
  EXPECT_EQ(config["layer_types"],
            Json::array({"full_attention", "sliding_attention", "full_attention"}));
  EXPECT_EQ(ReadAll(dir.File("out/") + kHfModelingFile), std::string(HfModelingSource()));
}

}  // namespace
}  // namespace hyb::worker
