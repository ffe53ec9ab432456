// Every build-time backend choice of the communicators in one place: the entry points of a
// backend this build was configured without say so (HYB_MPI=OFF, HYB_CUDA=OFF).
#include <cstdlib>

#include "hyb/worker/communicator.h"

namespace hyb::worker {

#if !HYB_WITH_MPI
bool MpiAvailable() { return false; }
Status MpiInit() {
  return Unimplemented("this build has no MPI backend (configure with -DHYB_MPI=ON and OpenMPI)");
}
void MpiFinalize() {}
void MpiAbort(int code) { std::_Exit(code); }
bool LaunchedByMpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr;
}
int MpiLocalRank() { return 0; }
StatusOr<std::unique_ptr<Communicator>> MpiWorld(std::chrono::milliseconds) { return MpiInit(); }
#endif

#if !HYB_WITH_CUDA
bool NcclAvailable() { return false; }
StatusOr<std::string> NcclNewUniqueId() {
  return Unimplemented("this build has no NCCL backend (configure with -DHYB_CUDA=ON)");
}
StatusOr<std::unique_ptr<Communicator>> NcclConnect(const std::string&, int, int, int,
                                                    std::chrono::milliseconds,
                                                    const std::string&) {
  return NcclNewUniqueId().status();
}
#endif

}  // namespace hyb::worker
