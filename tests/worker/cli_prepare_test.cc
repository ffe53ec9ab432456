// `hybridize prepare`: a real process tokenizing a JSONL file into a token dataset.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>

#include "hyb/storage/token_dataset.h"
#include "hyb/storage/tokenizer.h"
#include "testing/temp_dir.h"

namespace hyb::storage {
namespace {

TEST(CliPrepareTest, WritesTokenizedDocumentsWithEos) {
  const char* cli = std::getenv("HYB_CLI");
  if (cli == nullptr) GTEST_SKIP() << "HYB_CLI not set (run through ctest)";
  hyb::testing::TempDir temp;
  const std::string& dir = temp.path();
  const std::string tok_path =
      std::string(HYB_TEST_DATA_DIR) + "/tokenizers/qwen2_style/tokenizer.json";
  const std::vector<std::string> docs = {"Hello, world!", "naïve café 123",
                                         "def f(x):\n  return x"};
  {
    std::ofstream out(dir + "/c.jsonl");
    for (const auto& d : docs) out << Json{{"body", d}}.dump() << "\n";
  }
  const std::string cmd = std::string(cli) + " prepare --tokenizer " + tok_path + " --input " +
                          dir + "/c.jsonl --output " + dir + "/ds --text-field body > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  auto ds = storage::TokenDataset::Open(dir + "/ds");
  ASSERT_TRUE(ds.ok()) << ds.status().ToString();
  auto tok = *Tokenizer::FromFile(tok_path);
  const int64_t eos = *tok->TokenToId("<|endoftext|>");
  ASSERT_EQ((*ds)->num_documents(), 3);
  for (int64_t d = 0; d < 3; ++d) {
    auto want = tok->Encode(docs[static_cast<size_t>(d)]);
    want.push_back(eos);
    EXPECT_EQ((*ds)->Document(d), want);
  }
  // A line without the field is an error naming file and line; nothing is written.
  { std::ofstream(dir + "/bad.jsonl") << "{\"body\": \"x\"}\n{\"text\": \"y\"}\n"; }
  const std::string bad = std::string(cli) + " prepare --tokenizer " + tok_path + " --input " +
                          dir + "/bad.jsonl --output " + dir + "/ds2 --text-field body 2> " + dir +
                          "/err.txt";
  EXPECT_EQ(WEXITSTATUS(std::system(bad.c_str())), 1);
  auto err = ReadFileToString(dir + "/err.txt");
  EXPECT_NE(err->find("bad.jsonl:2"), std::string::npos) << *err;
  EXPECT_FALSE(storage::TokenDataset::Open(dir + "/ds2").ok());
}

}  // namespace
}  // namespace hyb::storage
