// ValidateJob on real files, built without LibTorch: a teacher directory (config.json, a
// safetensors file, tokenizer.json), a token dataset, task files and a job spec parsed the way
// `hybridize run` parses it.
#include "hyb/coordinator/job_validation.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <functional>

#include "hyb/storage/fingerprint.h"
#include "hyb/storage/safetensors.h"
#include "hyb/storage/token_dataset.h"
#include "testing/temp_dir.h"

namespace hyb::coordinator {
namespace {

using hyb::testing::TempDir;

// Character-level: a=0 b=1 c=2 ' '=3 '\n'=4, <s>=5 (as tests/worker/test_model.cc's).
const Json kCharTokenizer = {
    {"model",
     {{"type", "BPE"},
      {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {" ", 3}, {"\n", 4}}},
      {"merges", Json::array()}}},
    {"added_tokens", {{{"id", 5}, {"content", "<s>"}, {"special", true}}}}};

Json TeacherConfig() {
  return {{"model_type", "llama"},      {"vocab_size", 6},        {"hidden_size", 8},
          {"intermediate_size", 16},    {"num_hidden_layers", 3}, {"num_attention_heads", 2},
          {"num_key_value_heads", 1},   {"rms_norm_eps", 1e-5},   {"hidden_act", "silu"},
          {"tie_word_embeddings", true}};
}

void WriteTeacher(const std::string& dir, const Json& config) {
  ::mkdir(dir.c_str(), 0755);
  std::ofstream(dir + "/config.json") << config.dump(2);
  std::ofstream(dir + "/tokenizer.json") << kCharTokenizer.dump();
  // Validation only opens the weights; one tensor is enough.
  const std::vector<float> w(6 * 8, 0.5f);
  ASSERT_TRUE(storage::WriteSafetensors(dir + "/model.safetensors", {{"model.embed_tokens.weight",
                                                                      storage::DType::kF32,
                                                                      {6, 8},
                                                                      w.data(),
                                                                      w.size() * sizeof(float)}})
                  .ok());
}

// `documents` documents of 41 tokens below `vocab`; `extra_meta` goes into meta.json.
void WriteData(const std::string& dir, int64_t vocab, int documents, const Json& extra_meta) {
  storage::TokenDatasetWriter w(dir, vocab, extra_meta);
  for (int d = 0; d < documents; ++d) {
    std::vector<int64_t> doc = {vocab - 1};
    for (int i = 0; i < 40; ++i) doc.push_back((d * 7 + i * i) % 5);
    ASSERT_TRUE(w.AddDocument(doc).ok());
  }
  ASSERT_TRUE(w.Finish().ok());
}

void WriteLines(const std::string& path, const std::vector<Json>& lines) {
  std::ofstream out(path);
  for (const Json& l : lines) out << l.dump() << "\n";
}

// A valid job in `dir`: teacher/, data/ (tokenized with the teacher's tokenizer), generate
// tasks validation.jsonl (5 examples) and test.jsonl (3).
class JobValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteTeacher(dir_.File("teacher"), TeacherConfig());
    auto fingerprint = storage::FingerprintFile(dir_.File("teacher/tokenizer.json"));
    ASSERT_TRUE(fingerprint.ok());
    WriteData(dir_.File("data"), 6, 30,
              {{"tokenizer", dir_.File("teacher")}, {"tokenizer_fingerprint", *fingerprint}});
    std::vector<Json> validation, test;
    for (int i = 0; i < 5; ++i) validation.push_back({{"prompt", "ab"}, {"answer", "c"}});
    for (int i = 0; i < 3; ++i) test.push_back({{"prompt", "ba"}, {"answer", "c"}});
    WriteLines(dir_.File("validation.jsonl"), validation);
    WriteLines(dir_.File("test.jsonl"), test);
    job_ = {{"job_id", "tiny"},
            {"teacher", "teacher"},
            {"distill", {{"data", "data"}, {"batch_size", 2}, {"sequence_length", 16}}},
            {"task",
             {{"type", "generate"}, {"validation", "validation.jsonl"}, {"test", "test.jsonl"}}},
            {"search", {{"tolerance", 0.5}}}};
  }

  // The job with `patch` merged in, parsed as `hybridize run` parses job.json in dir_.
  JobSpec Spec(const Json& patch = Json::object()) const {
    Json job = job_;
    job.merge_patch(patch);
    auto spec = ParseJobSpec(job.dump(), "job.json", dir_.path());
    EXPECT_TRUE(spec.ok()) << spec.status().ToString();
    return spec.ok() ? *spec : JobSpec{};
  }

  // The error of ValidateJob(spec): InvalidArgument, message returned.
  static std::string ErrorOf(const JobSpec& spec) {
    auto v = ValidateJob(spec);
    EXPECT_FALSE(v.ok());
    if (v.ok()) return "";
    EXPECT_EQ(v.status().code(), StatusCode::kInvalidArgument) << v.status().ToString();
    return v.status().message();
  }

  TempDir dir_;
  Json job_;
};

#define EXPECT_STARTS_WITH(text, prefix) EXPECT_EQ(std::string(text).rfind(prefix, 0), 0u) << (text)
#define EXPECT_CONTAINS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

TEST_F(JobValidationTest, AValidSpecPassesWithWhatItLearned) {
  auto v = ValidateJob(Spec());
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->num_layers, 3);
  EXPECT_EQ(v->family, "llama");
  EXPECT_EQ(v->config.hidden_size, 8);
  EXPECT_EQ(v->mixer.type, storage::LinearMixerType::kGatedDeltaNet);
  EXPECT_EQ(v->task_kind, storage::TaskKind::kGenerate);
  EXPECT_EQ(v->eligible_layers, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(v->distill_tokens, 30 * 41);
  EXPECT_EQ(v->validation_examples, 5);
  EXPECT_EQ(v->test_examples, 3);
  EXPECT_EQ(v->metric, "exact_match");  // generate's default
  v = ValidateJob(Spec({{"task", {{"metric", "f1"}}}, {"search", {{"criterion", "confident"}}}}));
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->metric, "f1");

  v = ValidateJob(Spec({{"search", {{"layers", {2, 0}}}},
                        {"task", {{"max_validation_examples", 2}, {"test", nullptr}}},
                        {"mixer", {{"type", "gla"}}},
                        {"device", "cuda:1"},
                        {"dtype", "bf16"}}));
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->eligible_layers, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(v->validation_examples, 2);
  EXPECT_EQ(v->test_examples, 0);
  EXPECT_EQ(v->mixer.type, storage::LinearMixerType::kGla);

  // kl_to_teacher with a KL bound.
  WriteLines(dir_.File("text.jsonl"), {{{"text", "abc"}}});
  v = ValidateJob(
      Spec({{"task", {{"type", "kl_to_teacher"}, {"validation", "text.jsonl"}, {"test", nullptr}}},
            {"search", {{"tolerance", nullptr}, {"p_min", 0.1}}}}));
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->task_kind, storage::TaskKind::kKlToTeacher);
}

TEST_F(JobValidationTest, TeacherProblemsNameTheTeacher) {
  EXPECT_STARTS_WITH(ErrorOf(Spec({{"teacher", "missing"}})),
                     "teacher: " + dir_.File("missing") + " is not a directory");

  WriteTeacher(dir_.File("no_config"), TeacherConfig());
  std::remove(dir_.File("no_config/config.json").c_str());
  EXPECT_STARTS_WITH(ErrorOf(Spec({{"teacher", "no_config"}})),
                     "teacher: " + dir_.File("no_config/config.json") + ": cannot open file");

  Json gpt2 = TeacherConfig();
  gpt2["model_type"] = "gpt2";
  WriteTeacher(dir_.File("gpt2"), gpt2);
  std::string e = ErrorOf(Spec({{"teacher", "gpt2"}}));
  EXPECT_STARTS_WITH(e, "teacher: " + dir_.File("gpt2/config.json"));
  EXPECT_CONTAINS(e, "model_type");

  Json hybrid = TeacherConfig();
  hybrid["layer_types"] = {"full_attention", "linear_attention", "full_attention"};
  hybrid["linear_attention"] = {{"mixer", "gla"}};
  WriteTeacher(dir_.File("hybrid"), hybrid);
  EXPECT_STARTS_WITH(ErrorOf(Spec({{"teacher", "hybrid"}})),
                     "teacher: layer 1 is not softmax attention");

  WriteTeacher(dir_.File("no_weights"), TeacherConfig());
  std::remove(dir_.File("no_weights/model.safetensors").c_str());
  EXPECT_STARTS_WITH(ErrorOf(Spec({{"teacher", "no_weights"}})), "teacher: ");

  WriteTeacher(dir_.File("bad_tokenizer"), TeacherConfig());
  std::ofstream(dir_.File("bad_tokenizer/tokenizer.json")) << R"({"model": {"type": "Unigram"}})";
  EXPECT_STARTS_WITH(ErrorOf(Spec({{"teacher", "bad_tokenizer"}})), "teacher: ");
  std::remove(dir_.File("bad_tokenizer/tokenizer.json").c_str());
  EXPECT_STARTS_WITH(ErrorOf(Spec({{"teacher", "bad_tokenizer"}})), "teacher: ");
}

TEST_F(JobValidationTest, PlacementAndMixerProblemsNameTheirFields) {
  // The schema keeps these out of job files; a spec built another way is checked again.
  JobSpec spec = Spec();
  spec.device = "tpu";
  EXPECT_STARTS_WITH(ErrorOf(spec), "device: 'tpu' is not a device");
  spec = Spec();
  spec.dtype = "int8";
  EXPECT_STARTS_WITH(ErrorOf(spec), "dtype: 'int8' is not one of");
  // The schema admits chunk sizes up to 4096; the mixers take at most 1024.
  EXPECT_STARTS_WITH(ErrorOf(Spec({{"mixer", {{"chunk_size", 2048}}}})),
                     "mixer: field 'chunk_size' must be in [1, 1024]");
  EXPECT_STARTS_WITH(ErrorOf(Spec({{"mixer", {{"conv_size", 32}}}})), "mixer: field 'conv_size'");
}

TEST_F(JobValidationTest, DistillDataProblemsNameDistillData) {
  EXPECT_STARTS_WITH(ErrorOf(Spec({{"distill", {{"data", "missing"}}}})), "distill.data: ");

  WriteData(dir_.File("big_vocab"), 100, 30, Json::object());
  EXPECT_STARTS_WITH(ErrorOf(Spec({{"distill", {{"data", "big_vocab"}}}})),
                     "distill.data: " + dir_.File("big_vocab") +
                         " was prepared with a vocabulary of 100 tokens, the teacher has 6");

  WriteData(
      dir_.File("other_tok"), 6, 30,
      {{"tokenizer", "other/tokenizer.json"}, {"tokenizer_fingerprint", "12:0123456789abcdef"}});
  EXPECT_STARTS_WITH(ErrorOf(Spec({{"distill", {{"data", "other_tok"}}}})),
                     "distill.data: " + dir_.File("other_tok") +
                         " was tokenized with other/tokenizer.json (fingerprint "
                         "12:0123456789abcdef), not the teacher's");

  // Data prepared before fingerprints were recorded: checked by vocabulary only.
  WriteData(dir_.File("no_fingerprint"), 6, 30, Json::object());
  EXPECT_TRUE(ValidateJob(Spec({{"distill", {{"data", "no_fingerprint"}}}})).ok());

  EXPECT_STARTS_WITH(ErrorOf(Spec({{"distill", {{"batch_size", 64}, {"sequence_length", 128}}}})),
                     "distill.data: 1230 tokens, fewer than one batch (8192)");
}

TEST_F(JobValidationTest, TaskProblemsNameTheTaskField) {
  JobSpec spec = Spec();
  spec.task.type = "qa";
  EXPECT_STARTS_WITH(ErrorOf(spec), "task.type: task type 'qa' is not one of");

  EXPECT_STARTS_WITH(ErrorOf(Spec({{"task", {{"validation", "missing.jsonl"}}}})),
                     "task.validation: ");

  WriteLines(dir_.File("bad.jsonl"), {{{"prompt", "a"}, {"answer", "b"}}, {{"prompt", "a"}}});
  const std::string e = ErrorOf(Spec({{"task", {{"validation", "bad.jsonl"}}}}));
  EXPECT_STARTS_WITH(e, "task.validation: " + dir_.File("bad.jsonl") + ":2: ");
  EXPECT_CONTAINS(e, "'answer' is required");

  std::ofstream(dir_.File("empty.jsonl")) << "\n";
  EXPECT_STARTS_WITH(ErrorOf(Spec({{"task", {{"validation", "empty.jsonl"}}}})),
                     "task.validation: " + dir_.File("empty.jsonl") + ": no examples");

  // A task file of another kind: generate examples are not multiple-choice ones.
  EXPECT_STARTS_WITH(ErrorOf(Spec({{"task", {{"type", "multiple_choice"}}}})),
                     "task.validation: " + dir_.File("validation.jsonl") + ":1: ");

  EXPECT_STARTS_WITH(ErrorOf(Spec({{"task", {{"test", "bad.jsonl"}}}})),
                     "task.test: " + dir_.File("bad.jsonl") + ":2: ");

  // task.metric must belong to the task type.
  EXPECT_EQ(ErrorOf(Spec({{"task", {{"metric", "acc_norm"}}}})),
            "task.metric: 'acc_norm' is not a metric of generate tasks (exact_match, contains, f1)");
  WriteLines(dir_.File("text.jsonl"), {{{"text", "abc"}}});
  EXPECT_EQ(ErrorOf(Spec({{"task",
                           {{"type", "lm"},
                            {"validation", "text.jsonl"},
                            {"test", nullptr},
                            {"metric", "f1"}}}})),
            "task.metric: lm tasks have one metric (loss) and take no task.metric, got 'f1'");
  // A name outside every type's list is the schema's to reject, naming the field.
  Json job = job_;
  job["task"]["metric"] = "bleu";
  auto parsed = ParseJobSpec(job.dump(), "job.json", dir_.path());
  ASSERT_FALSE(parsed.ok());
  EXPECT_CONTAINS(parsed.status().message(), "task.metric");
}

TEST_F(JobValidationTest, SearchProblemsNameTheSearchField) {
  EXPECT_EQ(ErrorOf(Spec({{"search", {{"layers", {0, 3}}}}})),
            "search.layers: layer 3 does not exist (the teacher has 3 layers)");

  // kl_to_teacher scores the teacher 0: a relative tolerance admits nothing.
  WriteLines(dir_.File("text.jsonl"), {{{"text", "abc"}}});
  const std::string e = ErrorOf(Spec(
      {{"task", {{"type", "kl_to_teacher"}, {"validation", "text.jsonl"}, {"test", nullptr}}}}));
  EXPECT_CONTAINS(e, "kl_to_teacher");
  EXPECT_CONTAINS(e, "give search.p_min");

  // criterion confident decides by bootstrap intervals: it needs resamples.
  EXPECT_STARTS_WITH(
      ErrorOf(Spec({{"search", {{"criterion", "confident"}, {"bootstrap_samples", 0}}}})),
      "search.criterion: \"confident\" commits by a bootstrap interval");
  EXPECT_EQ(Spec().search.criterion, "point");  // the default: the paper's rule
  JobSpec spec = Spec();
  spec.search.criterion = "strict";  // what the schema stops in a file; the API checks again
  EXPECT_EQ(ErrorOf(spec), "search.criterion: must be \"point\" or \"confident\", got \"strict\"");
  Json job = job_;
  job["search"]["criterion"] = "strict";
  auto parsed = ParseJobSpec(job.dump(), "job.json", dir_.path());
  ASSERT_FALSE(parsed.ok());
  EXPECT_CONTAINS(parsed.status().message(), "search.criterion");
}

TEST_F(JobValidationTest, ChecksRunInTheOrderAUserFixesThem) {
  // A spec wrong everywhere reports its teacher first, then the data, then the task, then the
  // search.
  WriteLines(dir_.File("text.jsonl"), {{{"text", "abc"}}});
  Json all_wrong = {{"teacher", "missing"},
                    {"distill", {{"data", "missing"}}},
                    {"task", {{"validation", "missing.jsonl"}}},
                    {"search", {{"layers", {9}}}}};
  EXPECT_STARTS_WITH(ErrorOf(Spec(all_wrong)), "teacher: ");
  all_wrong.erase("teacher");
  EXPECT_STARTS_WITH(ErrorOf(Spec(all_wrong)), "distill.data: ");
  all_wrong.erase("distill");
  EXPECT_STARTS_WITH(ErrorOf(Spec(all_wrong)), "task.validation: ");
  all_wrong.erase("task");
  EXPECT_STARTS_WITH(ErrorOf(Spec(all_wrong)), "search.layers: ");
}

}  // namespace
}  // namespace hyb::coordinator
