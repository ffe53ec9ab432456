// One behaviour contract for every Env (POSIX in a temporary directory, in-memory), then the
// durable-write helpers and the storage writers under injected write and fsync failures.
#include "hyb/storage/env.h"

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "hyb/storage/atomic_file.h"
#include "hyb/storage/checkpoint.h"
#include "hyb/storage/job_layout.h"
#include "hyb/storage/token_dataset.h"
#include "testing/temp_dir.h"

namespace hyb::storage {
namespace {

using hyb::testing::TempDir;
using Names = std::vector<std::string>;

// An Env to test and a directory in it that exists and is empty.
class EnvFixture {
 public:
  explicit EnvFixture(const std::string& kind) {
    if (kind == "Posix") {
      temp_ = std::make_unique<TempDir>();
      env_ = Env::Posix();
      root_ = temp_->path();
    } else {
      owned_ = NewMemEnv();
      env_ = owned_.get();
      root_ = "/work/jobs";
      EXPECT_TRUE(env_->CreateDirectories(root_).ok());
    }
  }
  Env* env() const { return env_; }
  std::string Path(const std::string& name) const { return root_ + "/" + name; }
  const std::string& root() const { return root_; }

 private:
  std::unique_ptr<TempDir> temp_;
  std::unique_ptr<Env> owned_;
  Env* env_ = nullptr;
  std::string root_;
};

std::string Read(Env* env, const std::string& path) {
  auto r = env->ReadFile(path);
  return r.ok() ? *r : "<" + r.status().ToString() + ">";
}

Status Write(Env* env, const std::string& path, const std::string& contents) {
  HYB_ASSIGN_OR_RETURN(auto file, env->NewWritableFile(path));
  HYB_RETURN_IF_ERROR(file->Append(contents));
  HYB_RETURN_IF_ERROR(file->Sync());
  return file->Close();
}

bool Contains(const Status& s, const std::string& text) {
  return s.message().find(text) != std::string::npos;
}

class EnvContractTest : public ::testing::TestWithParam<std::string> {
 protected:
  EnvFixture fx_{GetParam()};
  Env* env_ = fx_.env();
};

INSTANTIATE_TEST_SUITE_P(Envs, EnvContractTest, ::testing::Values("Posix", "Mem"),
                         [](const auto& info) { return info.param; });

TEST_P(EnvContractTest, WritableFileCreatesTruncatesAndRefusesUseAfterClose) {
  const std::string path = fx_.Path("a.txt");
  auto file = env_->NewWritableFile(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  ASSERT_TRUE((*file)->Append("hello ").ok());
  ASSERT_TRUE((*file)->Append(std::string("wor\0ld", 6)).ok());  // bytes, not C strings
  ASSERT_TRUE((*file)->Sync().ok());
  ASSERT_TRUE((*file)->Close().ok());
  EXPECT_EQ(Read(env_, path), std::string("hello wor\0ld", 12));
  EXPECT_EQ((*file)->Append("x").code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ((*file)->Sync().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ((*file)->Close().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ((*file)->path(), path);

  ASSERT_TRUE(Write(env_, path, "new").ok());  // truncates
  EXPECT_EQ(Read(env_, path), "new");
  ASSERT_TRUE(Write(env_, fx_.Path("empty"), "").ok());
  EXPECT_EQ(Read(env_, fx_.Path("empty")), "");
}

TEST_P(EnvContractTest, AppendableFileAppends) {
  const std::string path = fx_.Path("log");
  for (const char* part : {"one\n", "two\n"}) {
    auto file = env_->NewAppendableFile(path);
    ASSERT_TRUE(file.ok()) << file.status().ToString();
    ASSERT_TRUE((*file)->Append(part).ok());
    ASSERT_TRUE((*file)->Close().ok());
  }
  EXPECT_EQ(Read(env_, path), "one\ntwo\n");
}

TEST_P(EnvContractTest, OpenAndReadErrorsNameThePath) {
  const std::string missing = fx_.Path("missing");
  EXPECT_EQ(env_->ReadFile(missing).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(env_->ReadFile(missing).status(), missing));
  // No parent directory: NotFound; a directory where the file should be: IoError.
  auto no_parent = env_->NewWritableFile(fx_.Path("no/such/dir/f"));
  EXPECT_EQ(no_parent.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(no_parent.status(), fx_.Path("no/such/dir/f")));
  EXPECT_EQ(env_->NewAppendableFile(fx_.Path("no/f")).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(env_->CreateDirectories(fx_.Path("d")).ok());
  EXPECT_EQ(env_->NewWritableFile(fx_.Path("d")).status().code(), StatusCode::kIoError);
  EXPECT_EQ(env_->ReadFile(fx_.Path("d")).status().code(), StatusCode::kIoError);
}

TEST_P(EnvContractTest, CreateDirectoriesIsMkdirP) {
  const std::string deep = fx_.Path("a/b/c");
  EXPECT_FALSE(env_->FileExists(deep));
  ASSERT_TRUE(env_->CreateDirectories(deep).ok());
  EXPECT_TRUE(env_->IsDirectory(fx_.Path("a")));
  EXPECT_TRUE(env_->IsDirectory(deep));
  EXPECT_TRUE(env_->FileExists(deep));
  EXPECT_TRUE(env_->CreateDirectories(deep).ok());        // existing is fine
  EXPECT_TRUE(env_->CreateDirectories(deep + "/").ok());  // trailing slash
  EXPECT_TRUE(env_->CreateDirectories(fx_.root()).ok());

  ASSERT_TRUE(Write(env_, fx_.Path("a/file"), "x").ok());
  EXPECT_TRUE(env_->FileExists(fx_.Path("a/file")));
  EXPECT_FALSE(env_->IsDirectory(fx_.Path("a/file")));
  const Status under_file = env_->CreateDirectories(fx_.Path("a/file/sub"));
  EXPECT_EQ(under_file.code(), StatusCode::kIoError);
  EXPECT_TRUE(Contains(under_file, fx_.Path("a/file")));
  EXPECT_EQ(env_->CreateDirectories(fx_.Path("a/file")).code(), StatusCode::kIoError);
  EXPECT_EQ(env_->CreateDirectories("").code(), StatusCode::kInvalidArgument);
}

TEST_P(EnvContractTest, ListDirectoryGivesSortedNames) {
  ASSERT_TRUE(env_->CreateDirectories(fx_.Path("d/sub/deeper")).ok());
  for (const char* f : {"d/zeta", "d/alpha", "d/sub/inner", "d.txt"}) {
    ASSERT_TRUE(Write(env_, fx_.Path(f), f).ok());
  }
  auto names = env_->ListDirectory(fx_.Path("d"));
  ASSERT_TRUE(names.ok()) << names.status().ToString();
  EXPECT_EQ(*names, (Names{"alpha", "sub", "zeta"}));
  EXPECT_EQ(*env_->ListDirectory(fx_.root()), (Names{"d", "d.txt"}));
  EXPECT_EQ(*env_->ListDirectory(fx_.Path("d/sub/deeper")), Names{});
  EXPECT_EQ(env_->ListDirectory(fx_.Path("none")).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(env_->ListDirectory(fx_.Path("d.txt")).status().code(), StatusCode::kIoError);
}

TEST_P(EnvContractTest, RenameReplacesFilesAndMovesDirectories) {
  ASSERT_TRUE(Write(env_, fx_.Path("from"), "new").ok());
  ASSERT_TRUE(Write(env_, fx_.Path("to"), "old").ok());
  ASSERT_TRUE(env_->RenameFile(fx_.Path("from"), fx_.Path("to")).ok());
  EXPECT_FALSE(env_->FileExists(fx_.Path("from")));
  EXPECT_EQ(Read(env_, fx_.Path("to")), "new");
  const Status missing = env_->RenameFile(fx_.Path("from"), fx_.Path("x"));
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(missing, fx_.Path("from")));
  // No parent at the destination: an error, and the source stays.
  EXPECT_EQ(env_->RenameFile(fx_.Path("to"), fx_.Path("no/dir/to")).code(), StatusCode::kIoError);
  EXPECT_EQ(Read(env_, fx_.Path("to")), "new");

  // A directory with contents moves as a whole (how datasets and exports are published).
  ASSERT_TRUE(env_->CreateDirectories(fx_.Path("staging/inner")).ok());
  ASSERT_TRUE(Write(env_, fx_.Path("staging/inner/f"), "deep").ok());
  ASSERT_TRUE(env_->RenameFile(fx_.Path("staging"), fx_.Path("published")).ok());
  EXPECT_FALSE(env_->FileExists(fx_.Path("staging")));
  EXPECT_EQ(Read(env_, fx_.Path("published/inner/f")), "deep");
  // Onto a non-empty directory: refused.
  ASSERT_TRUE(env_->CreateDirectories(fx_.Path("other")).ok());
  ASSERT_TRUE(Write(env_, fx_.Path("other/f"), "o").ok());
  EXPECT_EQ(env_->RenameFile(fx_.Path("other"), fx_.Path("published")).code(),
            StatusCode::kIoError);
  EXPECT_EQ(Read(env_, fx_.Path("published/inner/f")), "deep");
}

TEST_P(EnvContractTest, RemoveFileAndRemoveAll) {
  ASSERT_TRUE(env_->CreateDirectories(fx_.Path("tree/a/b")).ok());
  ASSERT_TRUE(Write(env_, fx_.Path("tree/a/b/f"), "1").ok());
  ASSERT_TRUE(Write(env_, fx_.Path("tree/g"), "2").ok());
  ASSERT_TRUE(Write(env_, fx_.Path("tree-sibling"), "3").ok());

  ASSERT_TRUE(env_->RemoveFile(fx_.Path("tree/g")).ok());
  EXPECT_FALSE(env_->FileExists(fx_.Path("tree/g")));
  EXPECT_EQ(env_->RemoveFile(fx_.Path("tree/g")).code(), StatusCode::kNotFound);
  EXPECT_EQ(env_->RemoveFile(fx_.Path("tree/a")).code(), StatusCode::kIoError);  // a directory
  EXPECT_TRUE(env_->IsDirectory(fx_.Path("tree/a")));

  ASSERT_TRUE(env_->RemoveAll(fx_.Path("tree")).ok());
  EXPECT_FALSE(env_->FileExists(fx_.Path("tree")));
  EXPECT_FALSE(env_->FileExists(fx_.Path("tree/a/b/f")));
  EXPECT_EQ(Read(env_, fx_.Path("tree-sibling")), "3");         // a name prefix is not a subtree
  EXPECT_TRUE(env_->RemoveAll(fx_.Path("tree")).ok());          // absent is fine
  ASSERT_TRUE(env_->RemoveAll(fx_.Path("tree-sibling")).ok());  // a single file
  EXPECT_EQ(*env_->ListDirectory(fx_.root()), Names{});
}

TEST_P(EnvContractTest, SyncDirectory) {
  EXPECT_TRUE(env_->SyncDirectory(fx_.root()).ok());
  EXPECT_EQ(env_->SyncDirectory(fx_.Path("missing")).code(), StatusCode::kNotFound);
}

TEST_P(EnvContractTest, ConcurrentAppendLinesStayWhole) {
  const std::string path = fx_.Path("events.jsonl");
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        EXPECT_TRUE(AppendLine(env_, path, "{\"thread\": " + std::to_string(t) + "}").ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  const std::string text = Read(env_, path);
  size_t lines = 0;
  for (size_t pos = 0; pos < text.size();) {
    const size_t end = text.find('\n', pos);
    ASSERT_NE(end, std::string::npos);
    const std::string line = text.substr(pos, end - pos);
    EXPECT_EQ(line.rfind("{\"thread\": ", 0), 0u) << line;
    ++lines;
    pos = end + 1;
  }
  EXPECT_EQ(lines, 80u);
}

TEST(ParentDirectoryTest, Cases) {
  EXPECT_EQ(ParentDirectory("a/b"), "a");
  EXPECT_EQ(ParentDirectory("a/b/"), "a");
  EXPECT_EQ(ParentDirectory("a//b"), "a");
  EXPECT_EQ(ParentDirectory("b"), ".");
  EXPECT_EQ(ParentDirectory("/b"), "/");
  EXPECT_EQ(ParentDirectory("/"), "/");
  EXPECT_EQ(ParentDirectory("/x/y/z.json"), "/x/y");
}

TEST(MemEnvTest, NormalisesPathsAndIsIndependentOfDisk) {
  auto env = NewMemEnv();
  ASSERT_TRUE(env->CreateDirectories("/jobs//a/./b/").ok());
  ASSERT_TRUE(Write(env.get(), "/jobs/a/b/f", "x").ok());
  EXPECT_EQ(Read(env.get(), "/jobs//a/b/./f"), "x");
  EXPECT_EQ(*env->ListDirectory("/jobs/a/"), Names{"b"});
  EXPECT_FALSE(Env::Posix()->FileExists("/jobs/a/b/f"));
  // Relative paths live under ".", which exists from the start.
  ASSERT_TRUE(Write(env.get(), "rel.txt", "r").ok());
  EXPECT_EQ(*env->ListDirectory("."), Names{"rel.txt"});
  EXPECT_EQ(*env->ListDirectory("/"), Names{"jobs"});
}

// ---- Durable writes and injected faults, over both Envs.

class FaultTest : public ::testing::TestWithParam<std::string> {
 protected:
  EnvFixture fx_{GetParam()};
  FaultInjectionEnv env_{fx_.env()};

  // What is in the test directory, through the base Env.
  Names Listing() const {
    auto names = fx_.env()->ListDirectory(fx_.root());
    return names.ok() ? *names : Names{"<" + names.status().ToString() + ">"};
  }
};

INSTANTIATE_TEST_SUITE_P(OverEnvs, FaultTest, ::testing::Values("Posix", "Mem"),
                         [](const auto& info) { return info.param; });

TEST_P(FaultTest, AtomicWriteStringReplacesAndLeavesNoTemporary) {
  const std::string path = fx_.Path("job.json");
  ASSERT_TRUE(AtomicWriteString(&env_, path, "old").ok());
  ASSERT_TRUE(AtomicWriteString(&env_, path, "new").ok());
  EXPECT_EQ(Read(&env_, path), "new");
  EXPECT_EQ(Listing(), Names{"job.json"});
  EXPECT_EQ(env_.writes(), 2);
  EXPECT_EQ(env_.syncs(), 4);  // file and directory, twice
}

TEST_P(FaultTest, FailedWriteKeepsOldContentsAndRemovesTemporary) {
  const std::string path = fx_.Path("job.json");
  ASSERT_TRUE(AtomicWriteString(&env_, path, "old").ok());
  env_.FailNthWrite(1);
  const Status s = AtomicWriteString(&env_, path, "new");
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_TRUE(Contains(s, "injected fault: write #1")) << s.ToString();
  EXPECT_TRUE(Contains(s, path + ".tmp.")) << s.ToString();  // names the file written
  EXPECT_EQ(Read(&env_, path), "old");
  EXPECT_EQ(Listing(), Names{"job.json"});
  // The fault fires once: a retry succeeds.
  ASSERT_TRUE(AtomicWriteString(&env_, path, "new").ok());
  EXPECT_EQ(Read(&env_, path), "new");
}

TEST_P(FaultTest, FailedFileSyncKeepsOldContentsAndRemovesTemporary) {
  const std::string path = fx_.Path("report.json");
  ASSERT_TRUE(AtomicWriteString(&env_, path, "old").ok());
  env_.FailNthSync(1);  // the temporary file's fsync
  const Status s = AtomicWriteString(&env_, path, "new");
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_TRUE(Contains(s, "injected fault: sync #1")) << s.ToString();
  EXPECT_EQ(Read(&env_, path), "old");
  EXPECT_EQ(Listing(), Names{"report.json"});
  // Never written before: a failed first write leaves nothing at all.
  env_.FailNthSync(1);
  EXPECT_FALSE(AtomicWriteString(&env_, fx_.Path("fresh.json"), "x").ok());
  EXPECT_EQ(Listing(), Names{"report.json"});
}

TEST_P(FaultTest, FailNthSyncCountsFileAndDirectorySyncs) {
  const std::string path = fx_.Path("f");
  env_.FailNthSync(4);  // write 1: file #1, dir #2; write 2: file #3, dir #4
  ASSERT_TRUE(AtomicWriteString(&env_, path, "one").ok());
  EXPECT_EQ(env_.syncs(), 2);
  const Status s = AtomicWriteString(&env_, path, "two");
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_TRUE(Contains(s, "injected fault: sync #4")) << s.ToString();
  EXPECT_TRUE(Contains(s, fx_.root())) << s.ToString();  // the directory's fsync failed
  // Past the rename: the new contents are visible, only their durability is in doubt.
  EXPECT_EQ(Read(&env_, path), "two");
  EXPECT_EQ(env_.syncs(), 4);

  env_.FailNthSync(1);
  EXPECT_TRUE(Contains(env_.SyncDirectory(fx_.root()), "injected fault: sync #1"));
  EXPECT_TRUE(env_.SyncDirectory(fx_.root()).ok());
  EXPECT_EQ(env_.syncs(), 6);
  env_.FailNthSync(1);
  env_.FailNthSync(0);  // disarmed
  EXPECT_TRUE(AtomicWriteString(&env_, path, "three").ok());
}

TEST_P(FaultTest, StreamingWriteFailsAtTheNthChunk) {
  const std::string path = fx_.Path("big.bin");
  const std::string chunk(1000, 'c');
  env_.FailNthWrite(3);
  int chunks_written = 0;
  const Status s = AtomicWriteFile(&env_, path, [&](FileSink& sink) -> Status {
    for (int i = 0; i < 5; ++i) {
      HYB_RETURN_IF_ERROR(sink.Write(chunk));
      ++chunks_written;
    }
    return Status::Ok();
  });
  EXPECT_TRUE(Contains(s, "injected fault: write #3")) << s.ToString();
  EXPECT_EQ(chunks_written, 2);
  EXPECT_EQ(env_.writes(), 3);
  EXPECT_EQ(Listing(), Names{});

  size_t sunk = 0;
  ASSERT_TRUE(AtomicWriteFile(&env_, path, [&](FileSink& sink) -> Status {
                for (int i = 0; i < 5; ++i) HYB_RETURN_IF_ERROR(sink.Write(chunk));
                sunk = sink.bytes_written();
                return Status::Ok();
              }).ok());
  EXPECT_EQ(sunk, 5000u);
  EXPECT_EQ(Read(&env_, path), std::string(5000, 'c'));
}

TEST_P(FaultTest, FillErrorIsReturnedAndNothingIsPublished) {
  const std::string path = fx_.Path("f");
  const Status s = AtomicWriteFile(&env_, path, [](FileSink& sink) {
    EXPECT_TRUE(sink.Write("partial").ok());
    return DataLoss("fill gave up");
  });
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_EQ(Listing(), Names{});
  EXPECT_EQ(AtomicWriteString(&env_, fx_.Path("no/dir/f"), "x").code(), StatusCode::kNotFound);
}

TEST_P(FaultTest, AppendLineAppendsAndSurfacesErrors) {
  const std::string path = fx_.Path("events.jsonl");
  ASSERT_TRUE(AppendLine(&env_, path, R"({"event": "start"})").ok());
  EXPECT_EQ(env_.syncs(), 2);  // the file, and the directory because the file is new
  ASSERT_TRUE(AppendLine(&env_, path, R"({"event": "round"})").ok());
  EXPECT_EQ(env_.syncs(), 3);
  EXPECT_EQ(Read(&env_, path), "{\"event\": \"start\"}\n{\"event\": \"round\"}\n");

  env_.FailNthWrite(1);
  Status s = AppendLine(&env_, path, "lost");
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_TRUE(Contains(s, path + ": injected fault: write #1")) << s.ToString();
  env_.FailNthSync(1);
  s = AppendLine(&env_, path, "unsynced");
  EXPECT_TRUE(Contains(s, "injected fault: sync #1")) << s.ToString();
  EXPECT_EQ(Read(&env_, path),
            "{\"event\": \"start\"}\n{\"event\": \"round\"}\nunsynced\n");  // written, not synced

  EXPECT_EQ(AppendLine(&env_, path, "two\nlines").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(AppendLine(&env_, fx_.Path("no/dir/events.jsonl"), "x").code(), StatusCode::kNotFound);
}

TEST_P(FaultTest, CheckpointWriteFailsCleanlyAndMatchesAcrossEnvs) {
  std::vector<float> a(64, 1.5f), b(16, -2.0f);
  const std::vector<TensorToWrite> tensors = {{"a", DType::kF32, {8, 8}, a.data(), 256},
                                              {"b", DType::kF32, {16}, b.data(), 64}};
  ASSERT_TRUE(env_.CreateDirectories(fx_.Path("ckpt")).ok());
  // Sharded: shard 1, shard 2, then the index; fail the second shard's fsync.
  env_.FailNthSync(3);
  const Status s = WriteCheckpoint(&env_, fx_.Path("ckpt"), tensors, /*max_shard_bytes=*/300);
  EXPECT_TRUE(Contains(s, "injected fault: sync #3")) << s.ToString();
  EXPECT_EQ(*env_.ListDirectory(fx_.Path("ckpt")), Names{"model-00001-of-00002.safetensors"});
  // The retry publishes both shards and the index last.
  ASSERT_TRUE(WriteCheckpoint(&env_, fx_.Path("ckpt"), tensors, 300).ok());
  EXPECT_EQ(*env_.ListDirectory(fx_.Path("ckpt")),
            (Names{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                   "model.safetensors.index.json"}));
  // Rewritten as one file: the stale index is removed so it cannot shadow it.
  ASSERT_TRUE(WriteCheckpoint(&env_, fx_.Path("ckpt"), tensors).ok());
  EXPECT_FALSE(env_.FileExists(fx_.Path("ckpt/model.safetensors.index.json")));

  // The same bytes as the POSIX writer produces (the in-memory twin is faithful).
  TempDir disk;
  ASSERT_TRUE(WriteCheckpoint(Env::Posix(), disk.path(), tensors).ok());
  EXPECT_EQ(Read(&env_, fx_.Path("ckpt/model.safetensors")),
            Read(Env::Posix(), disk.File("model.safetensors")));
}

TEST_P(FaultTest, TokenDatasetFailsCleanlyAndARetrySucceeds) {
  const std::string dir = fx_.Path("data");
  for (int64_t sync = 1; sync <= 7; ++sync) {  // three files (file + dir sync each), then publish
    TokenDatasetWriter writer(dir, 100, {{"source", "test"}}, &env_);
    ASSERT_TRUE(writer.AddDocument({1, 2, 3}).ok());
    env_.FailNthSync(sync);
    const Status s = writer.Finish();
    EXPECT_TRUE(Contains(s, "injected fault: sync #" + std::to_string(sync))) << s.ToString();
    if (sync < 7) {
      EXPECT_EQ(Listing(), Names{}) << "sync " << sync;  // no dataset, no staging directory
    } else {
      EXPECT_EQ(Listing(), Names{"data"});  // published; only the final directory fsync failed
      ASSERT_TRUE(env_.RemoveAll(dir).ok());
    }
  }
  TokenDatasetWriter writer(dir, 100, {}, &env_);
  ASSERT_TRUE(writer.AddDocument({1, 2, 3}).ok());
  ASSERT_TRUE(writer.Finish().ok());
  EXPECT_EQ(*env_.ListDirectory(dir), (Names{"docs.idx", "meta.json", "tokens.bin"}));
  EXPECT_EQ(Read(&env_, dir + "/tokens.bin").size(), 12u);
  TokenDatasetWriter again(dir, 100, {}, &env_);
  EXPECT_EQ(again.Finish().code(), StatusCode::kFailedPrecondition);
  TokenDatasetWriter orphan(fx_.Path("no/parent/data"), 100, {}, &env_);
  EXPECT_EQ(orphan.Finish().code(), StatusCode::kNotFound);
}

TEST_P(FaultTest, JobLayoutCreatesItsDirectories) {
  const JobLayout layout(fx_.root(), "job-1");
  ASSERT_TRUE(layout.CreateDirectories(&env_).ok());
  EXPECT_EQ(*env_.ListDirectory(layout.dir()), (Names{"distill", "eval", "exports"}));
  EXPECT_EQ(*env_.ListDirectory(layout.dir() + "/eval"), (Names{"test", "validation"}));
}

TEST(FaultInjectionEnvTest, ArmParsesAFlag) {
  auto mem = NewMemEnv();
  FaultInjectionEnv env(mem.get());
  ASSERT_TRUE(env.Arm("write=2,sync=1").ok());
  EXPECT_TRUE(Contains(AtomicWriteString(&env, "/a", "x"), "injected fault: sync #1"));
  EXPECT_TRUE(Contains(AtomicWriteString(&env, "/a", "x"), "injected fault: write #2"));
  EXPECT_TRUE(AtomicWriteString(&env, "/a", "x").ok());
  for (const char* bad : {"", "sync", "sync=", "sync=x", "sync=-1", "fsync=1", "write=1,,"}) {
    const Status s = env.Arm(bad);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(Contains(s, "'" + std::string(bad) + "'")) << s.ToString();
  }
  ASSERT_FALSE(env.Arm("sync=1,bad").ok());  // nothing armed by a rejected spec
  EXPECT_TRUE(AtomicWriteString(&env, "/a", "x").ok());
}

// ---- Env::SetDefault: the legacy functions without an Env follow the process-wide default.

// Restores the default Env even when an assertion ends the test early.
struct DefaultEnvScope {
  explicit DefaultEnvScope(Env* env) { Env::SetDefault(env); }
  ~DefaultEnvScope() { Env::SetDefault(nullptr); }
};

TEST(DefaultEnvTest, LegacyFunctionsUseTheInstalledEnv) {
  EXPECT_EQ(Env::Default(), Env::Posix());
  TempDir dir;
  const std::string path = dir.File("job.json");
  ASSERT_TRUE(AtomicWriteString(path, "old").ok());
  {
    FaultInjectionEnv faulty(Env::Posix());
    DefaultEnvScope scope(&faulty);
    EXPECT_EQ(Env::Default(), &faulty);
    faulty.FailNthSync(1);
    const Status s = AtomicWriteString(path, "new");
    EXPECT_TRUE(Contains(s, "injected fault: sync #1")) << s.ToString();
    EXPECT_EQ(Read(Env::Posix(), path), "old");
    faulty.FailNthWrite(1);
    EXPECT_TRUE(Contains(AtomicWriteFile(path, [](FileSink& sink) { return sink.Write("x"); }),
                         "injected fault: write #1"));
    faulty.FailNthSync(1);
    EXPECT_TRUE(Contains(SyncParentDirectory(path), "injected fault: sync #1"));
  }
  EXPECT_EQ(Env::Default(), Env::Posix());
  EXPECT_EQ(Read(Env::Posix(), path), "old");
  EXPECT_EQ(*Env::Posix()->ListDirectory(dir.path()), Names{"job.json"});
}

TEST(DefaultEnvTest, AnInMemoryDefaultKeepsEverythingOffDisk) {
  auto mem = NewMemEnv();
  TempDir dir;
  const std::string job = dir.File("jobs/j");
  {
    DefaultEnvScope scope(mem.get());
    ASSERT_TRUE(MakeDirectories(job).ok());
    EXPECT_TRUE(PathExists(job));
    ASSERT_TRUE(JobLayout(dir.File("jobs"), "j").CreateDirectories().ok());
    ASSERT_TRUE(AtomicWriteString(job + "/job.json", "{}").ok());
    ASSERT_TRUE(AppendLine(job + "/events.jsonl", "{}").ok());
    TokenDatasetWriter writer(job + "/data", 10, {});
    ASSERT_TRUE(writer.AddDocument({1}).ok());
    ASSERT_TRUE(writer.Finish().ok());
  }
  EXPECT_EQ(*mem->ListDirectory(job),
            (Names{"data", "distill", "eval", "events.jsonl", "exports", "job.json"}));
  EXPECT_FALSE(PathExists(dir.File("jobs")));  // back on POSIX: nothing was written there
}

}  // namespace
}  // namespace hyb::storage
