#include "hyb/worker/tensor_io.h"

#include <torch/torch.h>

namespace hyb::worker {

at::ScalarType ToScalarType(storage::DType dtype) {
  switch (dtype) {
    case storage::DType::kF64: return at::kDouble;
    case storage::DType::kF32: return at::kFloat;
    case storage::DType::kF16: return at::kHalf;
    case storage::DType::kBF16: return at::kBFloat16;
    case storage::DType::kI64: return at::kLong;
    case storage::DType::kI32: return at::kInt;
  }
  return at::kFloat;
}

StatusOr<storage::DType> ToStorageDType(at::ScalarType type) {
  switch (type) {
    case at::kDouble: return storage::DType::kF64;
    case at::kFloat: return storage::DType::kF32;
    case at::kHalf: return storage::DType::kF16;
    case at::kBFloat16: return storage::DType::kBF16;
    case at::kLong: return storage::DType::kI64;
    case at::kInt: return storage::DType::kI32;
    default:
      return InvalidArgument(std::string("tensor element type ") + c10::toString(type) +
                             " cannot be stored");
  }
}

at::Tensor TensorFromView(const storage::TensorView& view) {
  const auto type = ToScalarType(view.dtype);
  const auto options = at::TensorOptions().dtype(type);
  const size_t elem = storage::DTypeSize(view.dtype);
  if (view.numel() == 0) return at::empty(view.shape, options);
  void* data = const_cast<std::byte*>(view.data);
  if (reinterpret_cast<uintptr_t>(data) % elem == 0) {
    std::shared_ptr<const void> owner = view.owner;
    return at::from_blob(data, view.shape, [owner](void*) mutable { owner.reset(); }, options);
  }
  at::Tensor out = at::empty(view.shape, options);
  std::memcpy(out.data_ptr(), view.data, view.nbytes);
  return out;
}

Status SaveTensors(const std::string& path, const NamedTensors& tensors,
                   const std::map<std::string, std::string>& metadata) {
  std::vector<at::Tensor> keep;
  std::vector<storage::TensorToWrite> items;
  keep.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) return InvalidArgument(path + ": tensor '" + name + "' is undefined");
    HYB_ASSIGN_OR_RETURN(storage::DType dtype, ToStorageDType(t.scalar_type()));
    try {
      keep.push_back(t.detach().to(at::kCPU).contiguous());
    } catch (const c10::Error& e) {
      return Internal(path + ": copying tensor '" + name + "' to host failed: " +
                      e.what_without_backtrace());
    }
    const at::Tensor& c = keep.back();
    items.push_back({name, dtype, c.sizes().vec(), c.data_ptr(),
                     static_cast<size_t>(c.numel()) * storage::DTypeSize(dtype)});
  }
  return storage::WriteSafetensors(path, items, metadata);
}

StatusOr<std::map<std::string, at::Tensor>> LoadTensors(const std::string& path) {
  HYB_ASSIGN_OR_RETURN(auto file, storage::SafetensorsFile::Open(path));
  std::map<std::string, at::Tensor> out;
  for (const std::string& name : file->names()) {
    HYB_ASSIGN_OR_RETURN(storage::TensorView view, file->Get(name));
    out.emplace(name, TensorFromView(view).clone());
  }
  return out;
}

}  // namespace hyb::worker
