// `hybridize prepare`: a real process tokenizing a JSONL file into a token dataset.
#include <gtest/gtest.h>
#include <sys/stat.h>
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

// Runs `hybridize prepare ARGS`; returns the exit code.
int Prepare(const std::string& args) {
  const std::string cmd = std::string(std::getenv("HYB_CLI")) + " prepare " + args +
                          " > /dev/null 2> /dev/null";
  return WEXITSTATUS(std::system(cmd.c_str()));
}

TEST(CliPrepareTest, SyntheticTokensOfAnyLength) {
  if (std::getenv("HYB_CLI") == nullptr) GTEST_SKIP() << "HYB_CLI not set (run through ctest)";
  hyb::testing::TempDir temp;
  const std::string tok = std::string(HYB_TEST_DATA_DIR) + "/tokenizers/llama3_style";
  // llama3_style: 5000 tokens, <|begin_of_text|> = 0 and <|end_of_text|> = 1 special.
  const std::string common = " --tokenizer " + tok + "/tokenizer.json --eos-token '<|end_of_text|>'"
                             " --doc-length 100 --synthetic-tokens 25050";
  ASSERT_EQ(Prepare(common + " --output " + temp.File("z") + " --seed 4"), 0);
  ASSERT_EQ(Prepare(common + " --output " + temp.File("z2") + " --seed 4"), 0);
  ASSERT_EQ(Prepare(common + " --output " + temp.File("u") + " --seed 4 --distribution uniform"),
            0);
  auto z = *TokenDataset::Open(temp.File("z"));
  EXPECT_EQ(z->num_tokens(), 25050);
  ASSERT_EQ(z->num_documents(), 251);  // 250 of 100 tokens and one of 50
  EXPECT_EQ(z->meta()["synthetic"]["distribution"], "zipf");
  std::vector<int64_t> counts(5000, 0);
  for (int64_t d = 0; d < z->num_documents(); ++d) {
    const auto doc = z->Document(d);
    ASSERT_EQ(doc.size(), d < 250 ? 100u : 50u);
    for (size_t k = 0; k < doc.size(); ++k) {
      if (k == 99) {
        ASSERT_EQ(doc[k], 1);  // eos closes every full document
        continue;
      }
      ASSERT_GE(doc[k], 2);  // no special token drawn
      ASSERT_LT(doc[k], 5000);
      ++counts[static_cast<size_t>(doc[k])];
    }
  }
  // Zipf over ranks 0..4997: P(id 2) = 1 / H(4998) ~ 0.11, P(ids >= 2500) ~ 0.08.
  int64_t high = 0;
  for (size_t i = 2500; i < counts.size(); ++i) high += counts[i];
  EXPECT_NEAR(static_cast<double>(counts[2]) / 24800, 0.110, 0.01);
  EXPECT_NEAR(static_cast<double>(high) / 24800, 0.077, 0.01);
  auto z2 = *TokenDataset::Open(temp.File("z2"));
  auto u = *TokenDataset::Open(temp.File("u"));
  EXPECT_EQ(z2->Document(7), z->Document(7));  // same seed, same ids
  int64_t u_high = 0;
  for (int64_t d = 0; d < u->num_documents(); ++d) {
    for (int64_t id : u->Document(d)) u_high += id >= 2500 ? 1 : 0;
  }
  EXPECT_NEAR(static_cast<double>(u_high) / 24800, 0.5, 0.02);
  // A source is required, and only one.
  EXPECT_EQ(Prepare("--tokenizer " + tok + " --output " + temp.File("x")), 1);
  EXPECT_EQ(Prepare("--tokenizer " + tok + " --output " + temp.File("x") +
                    " --synthetic-tokens 5 --text " + tok),
            1);
}

TEST(CliPrepareTest, PlainTextFilesCycledToATokenCount) {
  if (std::getenv("HYB_CLI") == nullptr) GTEST_SKIP() << "HYB_CLI not set (run through ctest)";
  hyb::testing::TempDir temp;
  const std::string tok_path =
      std::string(HYB_TEST_DATA_DIR) + "/tokenizers/gpt2_bytelevel/tokenizer.json";
  const std::string texts = temp.File("texts");
  ASSERT_EQ(::mkdir(texts.c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((texts + "/sub").c_str(), 0755), 0);
  std::ofstream(texts + "/b.txt") << "The quick brown fox.\n";
  std::ofstream(texts + "/sub/a.txt") << "Jumps over the lazy dog.";
  std::ofstream(texts + "/c.gz", std::ios::binary) << std::string("\x1f\x8b\x08\0\xff", 5);
  auto tok = *Tokenizer::FromFile(tok_path);
  const int64_t eos = *tok->TokenToId("<|endoftext|>");
  std::vector<int64_t> b = tok->Encode("The quick brown fox.\n"), a = tok->Encode(
                                                                    "Jumps over the lazy dog.");
  b.push_back(eos);
  a.push_back(eos);
  // Once: both text files in name order (b.txt before sub/), the gzip file skipped.
  ASSERT_EQ(Prepare("--tokenizer " + tok_path + " --text " + texts + " --output " +
                    temp.File("once")),
            0);
  auto once = *TokenDataset::Open(temp.File("once"));
  ASSERT_EQ(once->num_documents(), 2);
  EXPECT_EQ(once->Document(0), b);
  EXPECT_EQ(once->Document(1), a);
  // --tokens: read again until exactly that many tokens, the last document cut.
  const int64_t want = 2 * static_cast<int64_t>(a.size() + b.size()) + 3;
  ASSERT_EQ(Prepare("--tokenizer " + tok_path + " --text " + texts + "/b.txt," + texts +
                    "/sub --tokens " + std::to_string(want) + " --output " + temp.File("n")),
            0);
  auto n = *TokenDataset::Open(temp.File("n"));
  EXPECT_EQ(n->num_tokens(), want);
  ASSERT_EQ(n->num_documents(), 5);
  EXPECT_EQ(n->Document(2), b);
  EXPECT_EQ(n->Document(4), std::vector<int64_t>(b.begin(), b.begin() + 3));
  EXPECT_EQ(Prepare("--tokenizer " + tok_path + " --text " + temp.File("nowhere") +
                    " --output " + temp.File("x")),
            1);
}

}  // namespace
}  // namespace hyb::storage
