// Linked into every test binary: on a fatal signal, print the faulting instruction, the return
// address on top of the stack (useful when the fault is a call through a null pointer) and a
// stack trace to stderr before dying, so a crash on a machine without a debugger still says
// where it happened. Resolve the printed offsets with `addr2line -Cfe <binary> <offset>`.
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>

namespace {

void PrintAddress(const char* label, uintptr_t addr) {
  Dl_info info{};
  char line[512];
  if (addr != 0 && dladdr(reinterpret_cast<void*>(addr), &info) != 0 && info.dli_fname) {
    std::snprintf(line, sizeof(line), "%s: %#lx = %s+%#lx (%s)\n", label,
                  static_cast<unsigned long>(addr), info.dli_fname,
                  static_cast<unsigned long>(addr - reinterpret_cast<uintptr_t>(info.dli_fbase)),
                  info.dli_sname ? info.dli_sname : "?");
  } else {
    std::snprintf(line, sizeof(line), "%s: %#lx\n", label, static_cast<unsigned long>(addr));
  }
  (void)!write(STDERR_FILENO, line, std::strlen(line));
}

void OnFatalSignal(int sig, siginfo_t* info, void* context) {
  const char* name = strsignal(sig);
  (void)!write(STDERR_FILENO, "\n*** fatal signal: ", 19);
  (void)!write(STDERR_FILENO, name, std::strlen(name));
  (void)!write(STDERR_FILENO, "\n", 1);
  PrintAddress("fault address", reinterpret_cast<uintptr_t>(info->si_addr));
#if defined(__x86_64__)
  const auto* uc = static_cast<const ucontext_t*>(context);
  PrintAddress("instruction", static_cast<uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]));
  const auto* sp = reinterpret_cast<const uintptr_t*>(uc->uc_mcontext.gregs[REG_RSP]);
  PrintAddress("top of stack", sp[0]);
#else
  (void)context;
#endif
  void* frames[64];
  const int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  signal(sig, SIG_DFL);
  raise(sig);
}

const bool kInstalled = [] {
  struct sigaction sa {};
  sa.sa_sigaction = OnFatalSignal;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) sigaction(sig, &sa, nullptr);
  return true;
}();

}  // namespace
