#include "hyb/storage/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include "hyb/common/json_util.h"
#include "hyb/storage/atomic_file.h"

namespace hyb::storage {

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

uint64_t ReadLe64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint64_t>(p[i]);
  return v;
}

// numel * elem_size with overflow detection.
bool ByteCount(const std::vector<int64_t>& shape, size_t elem, uint64_t* out) {
  uint64_t n = elem;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d != 0 && n > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) {
      return false;
    }
    n *= static_cast<uint64_t>(d);
  }
  *out = n;
  return true;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

StatusOr<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  HYB_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  const size_t size = file->size();
  auto corrupt = [&](const std::string& what) { return DataLoss(path + ": " + what); };
  if (size < 8) {
    return corrupt("file is " + std::to_string(size) +
                   " bytes, too short for the 8-byte header length");
  }
  const uint64_t header_len = ReadLe64(file->data());
  if (header_len > size - 8) {
    return corrupt("header length " + std::to_string(header_len) + " exceeds the " +
                   std::to_string(size - 8) + " bytes after the length field");
  }
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return corrupt("header length " + std::to_string(header_len) + " exceeds the limit of " +
                   std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  }
  const std::string_view header_text(reinterpret_cast<const char*>(file->data()) + 8,
                                     static_cast<size_t>(header_len));
  // A valid header nests three levels ({name: {shape: [...]}}); anything deeper is corrupt.
  if (!CheckJsonDepth(header_text, 3, path).ok()) return corrupt("header nests too deeply");
  Json header = Json::parse(header_text.begin(), header_text.end(), nullptr, false);
  if (header.is_discarded()) return corrupt("header is not valid JSON");
  if (!header.is_object()) return corrupt("header is not a JSON object");

  auto out = std::shared_ptr<SafetensorsFile>(new SafetensorsFile());
  out->file_ = file;
  out->data_start_ = file->data() + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  struct Span {
    uint64_t begin, end;
    std::string name;
  };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const Json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return corrupt("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return corrupt("__metadata__ value for '" + m.key() + "' is not a string");
        }
        out->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!v.is_object()) return corrupt(where + ": entry is not an object");
    for (auto f = v.begin(); f != v.end(); ++f) {
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets") {
        return corrupt(where + ": unknown field '" + f.key() + "'");
      }
    }
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) return corrupt(where + ": missing string 'dtype'");
    auto dtype = ParseDType(dt->get<std::string>());
    if (!dtype.ok()) return InvalidArgument(path + ": " + where + ": " + dtype.status().message());
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) return corrupt(where + ": missing array 'shape'");
    std::vector<int64_t> shape;
    for (const Json& d : *sh) {
      if (!d.is_number_unsigned()) {
        return corrupt(where + ": shape entries must be non-negative integers, got " +
                       JsonSnippet(*sh));
      }
      const uint64_t u = d.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return corrupt(where + ": shape entry too large");
      }
      shape.push_back(static_cast<int64_t>(u));
    }
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return corrupt(where + ": 'data_offsets' must be two non-negative integers");
    }
    const uint64_t begin = (*off)[0].get<uint64_t>();
    const uint64_t end = (*off)[1].get<uint64_t>();
    if (begin > end) {
      return corrupt(where + ": data_offsets [" + std::to_string(begin) + ", " +
                     std::to_string(end) + "] are reversed");
    }
    if (end > data_size) {
      return corrupt(where + ": data_offsets end " + std::to_string(end) +
                     " is beyond the data section of " + std::to_string(data_size) +
                     " bytes (truncated file?)");
    }
    uint64_t expected = 0;
    if (!ByteCount(shape, DTypeSize(*dtype), &expected)) {
      return corrupt(where + ": shape " + ShapeString(shape) + " overflows");
    }
    if (expected != end - begin) {
      return corrupt(where + ": shape " + ShapeString(shape) + " of " +
                     std::string(DTypeName(*dtype)) + " needs " + std::to_string(expected) +
                     " bytes but data_offsets span " + std::to_string(end - begin));
    }
    out->entries_.emplace(name, Entry{*dtype, std::move(shape), begin, end});
    spans.push_back({begin, end, name});
  }

  // The data section must be covered exactly once.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  const std::string* last_name = nullptr;
  for (const Span& s : spans) {
    if (s.begin == s.end) continue;  // empty tensors occupy no bytes
    if (s.begin < covered) {
      return corrupt("tensor '" + s.name + "' overlaps tensor '" + *last_name + "' (bytes " +
                     std::to_string(s.begin) + " < " + std::to_string(covered) + ")");
    }
    if (s.begin > covered) {
      return corrupt("bytes " + std::to_string(covered) + ".." + std::to_string(s.begin) +
                     " of the data section belong to no tensor");
    }
    covered = s.end;
    last_name = &s.name;
  }
  if (covered != data_size) {
    return corrupt("data section has " + std::to_string(data_size - covered) +
                   " trailing bytes that belong to no tensor");
  }
  for (const Span& s : spans) out->names_.push_back(s.name);
  return std::shared_ptr<const SafetensorsFile>(std::move(out));
}

bool SafetensorsFile::Contains(std::string_view name) const {
  return entries_.find(name) != entries_.end();
}

StatusOr<TensorView> SafetensorsFile::Get(std::string_view name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return NotFound(path() + ": no tensor named '" + std::string(name) + "'");
  }
  TensorView v;
  v.name = it->first;
  v.dtype = it->second.dtype;
  v.shape = it->second.shape;
  v.data = data_start_ + it->second.begin;
  v.nbytes = static_cast<size_t>(it->second.end - it->second.begin);
  v.owner = file_;
  return v;
}

uint64_t TensorLayout::nbytes() const {
  uint64_t n = 0;
  return ByteCount(shape, DTypeSize(dtype), &n) ? n : 0;
}

Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  return WriteSafetensors(Env::Default(), path, tensors, metadata);
}

Status WriteSafetensors(Env* env, const std::string& path,
                        const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  std::vector<TensorLayout> layouts;
  std::map<std::string, const TensorToWrite*> by_name;
  for (const TensorToWrite& t : tensors) {
    uint64_t expected = 0;
    if (!ByteCount(t.shape, DTypeSize(t.dtype), &expected) || expected != t.nbytes) {
      return InvalidArgument(path + ": tensor '" + t.name + "' has " + std::to_string(t.nbytes) +
                             " bytes, shape " + ShapeString(t.shape) + " needs " +
                             std::to_string(expected));
    }
    if (t.nbytes > 0 && t.data == nullptr) {
      return InvalidArgument(path + ": tensor '" + t.name + "' has no data");
    }
    layouts.push_back({t.name, t.dtype, t.shape});
    by_name.emplace(t.name, &t);  // a duplicate is reported by the streaming writer
  }
  return WriteSafetensorsStreaming(
      env, path, layouts,
      [&](const TensorLayout& layout, FileSink& sink) {
        const TensorToWrite* t = by_name.at(layout.name);
        return sink.Write(t->data, t->nbytes);
      },
      metadata);
}

Status WriteSafetensorsStreaming(Env* env, const std::string& path,
                                 const std::vector<TensorLayout>& tensors,
                                 const TensorFiller& fill,
                                 const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorLayout*> order;
  std::set<std::string> seen;
  for (const TensorLayout& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") {
      return InvalidArgument(path + ": invalid tensor name '" + t.name + "'");
    }
    if (!seen.insert(t.name).second) {
      return InvalidArgument(path + ": duplicate tensor name '" + t.name + "'");
    }
    uint64_t bytes = 0;
    if (!ByteCount(t.shape, DTypeSize(t.dtype), &bytes)) {
      return InvalidArgument(path + ": tensor '" + t.name + "' has shape " +
                             ShapeString(t.shape) + ", which overflows");
    }
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](const TensorLayout* a, const TensorLayout* b) {
    const size_t sa = DTypeSize(a->dtype), sb = DTypeSize(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorLayout* t : order) {
    header[t->name] = {{"dtype", DTypeName(t->dtype)},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + t->nbytes()}}};
    offset += t->nbytes();
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');  // data section 8-byte aligned
  return AtomicWriteFile(env, path, [&](FileSink& sink) -> Status {
    unsigned char len[8];
    uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xff);
    HYB_RETURN_IF_ERROR(sink.Write(len, 8));
    HYB_RETURN_IF_ERROR(sink.Write(text));
    for (const TensorLayout* t : order) {
      const size_t before = sink.bytes_written();
      HYB_RETURN_IF_ERROR(fill(*t, sink));
      const uint64_t wrote = sink.bytes_written() - before;
      if (wrote != t->nbytes()) {
        return Internal(path + ": tensor '" + t->name + "': " + std::to_string(wrote) +
                        " bytes written, shape " + ShapeString(t->shape) + " needs " +
                        std::to_string(t->nbytes()));
      }
    }
    return Status::Ok();
  });
}

}  // namespace hyb::storage
