// Env: the one interface that job-storage I/O goes through (after leveldb's
// `include/leveldb/env.h`). Three implementations:
//   Env::Posix()        the real file system;
//   NewMemEnv()         an in-memory twin with the same contract, for tests;
//   FaultInjectionEnv   a wrapper that fails the Nth write or fsync, for fault tests (a worker
//                       process can install one with Env::SetDefault).
// Storage code that is not handed an Env uses Env::Default(). Durable-write helpers built on an
// Env (publish-by-rename, fsynced line appends) are in hyb/storage/atomic_file.h.
//
// Errors: a missing file or directory is NotFound; every other failure is IoError. Both name the
// path and the operation ("<path>: fsync failed: <strerror>").
//
// Not routed through Env: reads of large inputs through mmap (hyb/storage/mapped_file.h:
// safetensors weights, token datasets, input fingerprints), which always use the real file
// system.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "hyb/common/status.h"

namespace hyb::storage {

class FaultInjectionFile;

// One open file being written. Not thread-safe: one thread at a time per file.
class WritableFile {
 public:
  // Closes the file if Close() was not called; a close error is lost then (call Close to see it).
  virtual ~WritableFile() = default;

  // Appends all of `data` (short writes are retried). Nothing is durable until Sync().
  virtual Status Append(std::string_view data) = 0;
  // Flushes the file's data to stable storage (fsync).
  virtual Status Sync() = 0;
  // Closes the file; any later Append/Sync/Close returns FailedPrecondition.
  virtual Status Close() = 0;
  // The path the file was opened with, for messages.
  virtual const std::string& path() const = 0;
};

class Env {
 public:
  virtual ~Env() = default;

  // The real file system. A process-wide singleton, never deleted.
  static Env* Posix();
  // What storage code uses when not given an Env: Posix() unless SetDefault replaced it.
  static Env* Default();
  // Replaces Default() for the whole process (e.g. a worker started with a fault-injection flag,
  // or a test). `env` is not owned and must outlive every use; nullptr restores Posix(). Callers
  // already holding the old default keep using it.
  static void SetDefault(Env* env);

  // All methods below may be called from any thread.

  // Opens `path` for writing, creating it or truncating it to empty. The parent directory must
  // exist (NotFound otherwise); IoError if `path` is a directory.
  virtual StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) = 0;
  // Opens `path` for appending, creating it if absent. Same errors as NewWritableFile.
  virtual StatusOr<std::unique_ptr<WritableFile>> NewAppendableFile(const std::string& path) = 0;
  // The whole contents of the file at `path`. NotFound if absent; IoError if it is a directory.
  virtual StatusOr<std::string> ReadFile(const std::string& path) = 0;
  // True if `path` names a file or a directory (symbolic links followed).
  virtual bool FileExists(const std::string& path) = 0;
  // True if `path` names a directory (symbolic links followed).
  virtual bool IsDirectory(const std::string& path) = 0;
  // Names of the entries directly in directory `dir` (not "." or ".."), sorted. NotFound if `dir`
  // is absent; IoError if it is not a directory.
  virtual StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir) = 0;
  // mkdir -p: creates `dir` and any missing parents; existing directories are fine.
  // InvalidArgument for an empty path; IoError if `dir` or a parent exists and is not a directory.
  virtual Status CreateDirectories(const std::string& dir) = 0;
  // rename(2): atomically moves a file or a directory to `to`, replacing a file (or an empty
  // directory, when `from` is a directory) there. NotFound if `from` is absent.
  virtual Status RenameFile(const std::string& from, const std::string& to) = 0;
  // Removes one file (not a directory). NotFound if absent.
  virtual Status RemoveFile(const std::string& path) = 0;
  // rm -rf: removes `path` and, for a directory, everything under it. OK if `path` is absent.
  virtual Status RemoveAll(const std::string& path) = 0;
  // fsyncs directory `dir`, making renames and creations in it durable. NotFound if absent.
  virtual Status SyncDirectory(const std::string& dir) = 0;
};

// An empty in-memory file system: a map from normalised path to file or directory. "/" and "."
// exist from the start; other directories must be created (CreateDirectories) before files go in
// them, exactly as on disk. Sync is a no-op that succeeds. Paths are normalised ("a//b/./c/" is
// "a/b/c"); ".." is not interpreted. The caller owns the result.
std::unique_ptr<Env> NewMemEnv();

// Wraps another Env and forwards everything to it, counting writes (WritableFile::Append) and
// syncs (WritableFile::Sync and Env::SyncDirectory) and failing a chosen one of each. An injected
// failure does nothing in the base Env and returns IoError
// "<path>: injected fault: write #n" (or "sync #n"), n as given to FailNth*. Each injection fires
// once; later operations succeed again, so a retry of the failed work can succeed.
// Thread-safe. Files opened through this Env must not outlive it.
class FaultInjectionEnv : public Env {
 public:
  // `base` is not owned and must outlive this Env.
  explicit FaultInjectionEnv(Env* base);

  // The n-th Append from now (1-based) fails; 0 (or negative) disarms.
  void FailNthWrite(int64_t n);
  // The n-th Sync of a file or a directory from now (1-based) fails; 0 (or negative) disarms.
  void FailNthSync(int64_t n);
  // Arms from text, for a command-line flag or an environment variable: comma-separated
  // "write=N" and "sync=N" items (e.g. "sync=3" or "write=10,sync=2"), each as FailNth*(N).
  // InvalidArgument naming `spec` if an item is malformed; then nothing is armed.
  Status Arm(std::string_view spec);
  // Counts since construction, failed attempts included.
  int64_t writes() const;
  int64_t syncs() const;

  StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override;
  StatusOr<std::unique_ptr<WritableFile>> NewAppendableFile(const std::string& path) override;
  StatusOr<std::string> ReadFile(const std::string& path) override;
  bool FileExists(const std::string& path) override;
  bool IsDirectory(const std::string& path) override;
  StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir) override;
  Status CreateDirectories(const std::string& dir) override;
  Status RenameFile(const std::string& from, const std::string& to) override;
  Status RemoveFile(const std::string& path) override;
  Status RemoveAll(const std::string& path) override;
  Status SyncDirectory(const std::string& dir) override;

 private:
  friend class FaultInjectionFile;  // the files it opens call BeforeWrite and BeforeSync

  // Counts one operation on `path`; returns the injected fault if it is the armed one, else OK.
  Status BeforeWrite(const std::string& path);
  Status BeforeSync(const std::string& path);

  Env* base_;
  mutable std::mutex mu_;      // guards the six fields below
  int64_t writes_ = 0;         // Appends so far
  int64_t syncs_ = 0;          // file and directory syncs so far
  int64_t fail_write_at_ = 0;  // value of writes_ that fails; 0: none armed
  int64_t fail_sync_at_ = 0;   // value of syncs_ that fails; 0: none armed
  int64_t fail_write_n_ = 0;   // the n given to FailNthWrite, for the message
  int64_t fail_sync_n_ = 0;    // the n given to FailNthSync, for the message
};

// The directory containing `path`: "a/b" -> "a", "b" -> ".", "/b" -> "/", "a/b/" -> "a".
std::string ParentDirectory(std::string_view path);

}  // namespace hyb::storage
