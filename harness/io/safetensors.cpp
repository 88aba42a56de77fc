#include "harness/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "harness/io/output_path.h"
#include "reference/error.h"

namespace kvq {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeader = 100ull << 20;  // 100 MiB, as the safetensors crate allows
constexpr const char* kMetadataKey = "__metadata__";

std::string errno_text() {
  return std::strerror(errno);
}

bool parse_dtype(const std::string& text, DType* out) {
  static const std::pair<const char*, DType> kNames[] = {{"F32", DType::F32},
                                                         {"F16", DType::F16},
                                                         {"BF16", DType::BF16},
                                                         {"I32", DType::I32},
                                                         {"U8", DType::U8}};
  for (const auto& [name, dtype] : kNames)
    if (text == name) {
      *out = dtype;
      return true;
    }
  return false;
}

// A JSON number that is a non-negative integer (not a float, not negative).
bool as_u64(const json& value, uint64_t* out) {
  if (value.is_number_unsigned()) {
    *out = value.get<uint64_t>();
    return true;
  }
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(value.get<int64_t>());
    return true;
  }
  return false;
}

struct Entry {
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0, end = 0;
};

// nlohmann keeps the last of duplicate keys silently; this SAX pass over the (already parsed,
// so valid) header records the first duplicate at any nesting level so the header is rejected
// instead. A SAX pass rather than a parse callback: the callback parser rescans the enclosing
// object at every nested object's end, quadratic in the tensor count (issue 15).
struct DuplicateFinder : json::json_sax_t {
  std::vector<std::set<std::string>> stack;
  std::string duplicate;
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    stack.emplace_back();
    return true;
  }
  bool key(string_t& key) override {
    if (!stack.back().insert(key).second && duplicate.empty()) duplicate = key;
    return true;
  }
  bool end_object() override {
    stack.pop_back();
    return true;
  }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;
  }
};

void write_all(int fd, const void* data, size_t size, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(path + ": write failed (" + errno_text() + ")");
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

}  // namespace

struct SafetensorsFile::Impl {
  std::string path;
  const uint8_t* map = nullptr;
  size_t size = 0;
  const uint8_t* data = nullptr;  // start of the data area
  std::map<std::string, std::string> metadata;
  std::map<std::string, Entry> entries;
  // Aligned copies of tensors whose bytes in the mapping are not aligned to their element size
  // (the format packs tensors back to back, so a U8 tensor of odd length shifts the next one).
  mutable std::mutex copies_mutex;
  mutable std::map<std::string, std::vector<uint64_t>> aligned_copies;

  ~Impl() {
    if (map) ::munmap(const_cast<uint8_t*>(map), size);
  }

  std::string where(const std::string& name) const { return path + ": tensor '" + name + "'"; }
  void parse_header(uint64_t header_len);
};

void SafetensorsFile::Impl::parse_header(uint64_t header_len) {
  const char* text = reinterpret_cast<const char*>(map + 8);
  json header;
  try {
    header = json::parse(text, text + header_len);
  } catch (const json::exception& e) {
    throw Error(path + ": header is not valid JSON (" + e.what() + ")");
  }
  DuplicateFinder finder;
  json::sax_parse(text, text + header_len, &finder);
  if (!finder.duplicate.empty())
    throw Error(path + ": header has the key '" + finder.duplicate + "' twice");
  if (!header.is_object()) throw Error(path + ": header is not a JSON object");

  const uint64_t data_size = size - 8 - header_len;
  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      if (!value.is_object()) throw Error(path + ": __metadata__ is not an object");
      for (const auto& [key, text_value] : value.items()) {
        if (!text_value.is_string())
          throw Error(path + ": __metadata__ '" + key + "': value is not a string");
        metadata[key] = text_value.get<std::string>();
      }
      continue;
    }
    const std::string at = where(name);
    if (!value.is_object()) throw Error(at + ": entry is not an object");
    for (const auto& [key, unused] : value.items()) {
      (void)unused;
      if (key != "dtype" && key != "shape" && key != "data_offsets")
        throw Error(at + ": unexpected key '" + key + "'");
    }
    if (!value.contains("dtype") || !value["dtype"].is_string())
      throw Error(at + ": missing or non-string 'dtype'");
    if (!value.contains("shape") || !value["shape"].is_array())
      throw Error(at + ": missing or non-array 'shape'");
    if (!value.contains("data_offsets") || !value["data_offsets"].is_array() ||
        value["data_offsets"].size() != 2)
      throw Error(at + ": 'data_offsets' must be an array [begin, end]");

    Entry entry;
    const std::string dtype = value["dtype"].get<std::string>();
    if (!parse_dtype(dtype, &entry.dtype))
      throw Error(at + ": unsupported dtype '" + dtype + "' (kvq reads F32, F16, BF16, I32, U8)");
    for (const json& dim : value["shape"]) {
      uint64_t d = 0;
      if (!as_u64(dim, &d) || d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        throw Error(at + ": shape holds a value that is not a non-negative integer");
      entry.shape.push_back(static_cast<int64_t>(d));
    }
    if (!as_u64(value["data_offsets"][0], &entry.begin) ||
        !as_u64(value["data_offsets"][1], &entry.end))
      throw Error(at + ": data_offsets must be non-negative integers");
    if (entry.begin > entry.end)
      throw Error(at + ": data_offsets [" + std::to_string(entry.begin) + ", " +
                  std::to_string(entry.end) + "] end before begin");
    if (entry.end > data_size)
      throw Error(at + ": data_offsets [" + std::to_string(entry.begin) + ", " +
                  std::to_string(entry.end) + "] beyond the data area of " +
                  std::to_string(data_size) + " bytes");
    const int64_t numel = shape_numel(entry.shape, at);  // throws on overflow
    const auto elem = static_cast<int64_t>(dtype_size(entry.dtype));
    if (numel > std::numeric_limits<int64_t>::max() / elem)
      throw Error(at + ": shape " + shape_string(entry.shape) + " overflows the byte count");
    const uint64_t expected = static_cast<uint64_t>(numel * elem);
    if (entry.end - entry.begin != expected)
      throw Error(at + ": " + std::to_string(entry.end - entry.begin) + " bytes for " + dtype +
                  " " + shape_string(entry.shape) + ", expected " + std::to_string(expected));
    entries.emplace(name, std::move(entry));
  }

  // Overlap check: sorted by begin, each non-empty tensor must start at or after the end of the
  // previous non-empty one. Empty tensors own no bytes and cannot overlap anything.
  std::vector<std::pair<uint64_t, const std::string*>> order;
  for (const auto& [name, entry] : entries)
    if (entry.end > entry.begin) order.emplace_back(entry.begin, &name);
  std::sort(order.begin(), order.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 1; i < order.size(); ++i) {
    const Entry& prev = entries.at(*order[i - 1].second);
    if (order[i].first < prev.end)
      throw Error(where(*order[i].second) + ": data overlaps tensor '" + *order[i - 1].second +
                  "'");
  }
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open (" + errno_text() + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string why = errno_text();
    ::close(fd);
    throw Error(path + ": cannot stat (" + why + ")");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw Error(path + ": file is " + std::to_string(size) +
                " bytes, shorter than the 8-byte header length");
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) throw Error(path + ": mmap failed (" + errno_text() + ")");
  impl->map = static_cast<const uint8_t*>(map);
  impl->size = size;

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | impl->map[i];  // little-endian
  if (header_len > kMaxHeader)
    throw Error(path + ": header length " + std::to_string(header_len) + " exceeds 100 MiB");
  if (header_len > size - 8)
    throw Error(path + ": header length " + std::to_string(header_len) + " beyond the file (" +
                std::to_string(size) + " bytes)");
  impl->data = impl->map + 8 + header_len;
  impl->parse_header(header_len);
  return SafetensorsFile(std::move(impl));
}

SafetensorsFile::SafetensorsFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

const std::string& SafetensorsFile::path() const {
  return impl_->path;
}
const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return impl_->metadata;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [name, entry] : impl_->entries) out.push_back(name);
  return out;  // std::map order: sorted
}

bool SafetensorsFile::has(const std::string& name) const {
  return impl_->entries.count(name);
}

TensorView SafetensorsFile::view(const std::string& name) const {
  const auto it = impl_->entries.find(name);
  if (it == impl_->entries.end()) throw Error(impl_->where(name) + ": not in the file");
  const Entry& entry = it->second;
  const uint8_t* bytes = impl_->data + entry.begin;
  const size_t nbytes = entry.end - entry.begin;
  if (reinterpret_cast<uintptr_t>(bytes) % dtype_size(entry.dtype) != 0) {
    std::lock_guard<std::mutex> lock(impl_->copies_mutex);
    auto& copy = impl_->aligned_copies[name];
    if (copy.empty() && nbytes > 0) {
      copy.resize((nbytes + 7) / 8);
      std::memcpy(copy.data(), bytes, nbytes);
    }
    bytes = reinterpret_cast<const uint8_t*>(copy.data());
  }
  return TensorView{bytes, entry.dtype, entry.shape};
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name) const {
  const std::string at = impl_->where(name);
  std::vector<float> values = widen_f32(view(name), at);
  require_finite(values, at);
  return values;
}

std::vector<int32_t> SafetensorsFile::read_i32(const std::string& name) const {
  const TensorView v = view(name);
  if (v.dtype != DType::I32)
    throw Error(impl_->where(name) + ": expected I32, got " + dtype_name(v.dtype));
  std::vector<int32_t> out(static_cast<size_t>(v.numel()));
  if (!out.empty()) std::memcpy(out.data(), v.data, out.size() * sizeof(int32_t));
  return out;
}

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  uint64_t offset = 0;
  for (const NamedTensor& t : tensors) {
    const std::string at = path + ": tensor '" + t.name + "'";
    if (t.name == kMetadataKey) throw Error(at + ": the name is reserved for metadata");
    if (header.contains(t.name)) throw Error(at + ": given twice");
    const auto nbytes =
        static_cast<uint64_t>(shape_numel(t.view.shape, at)) * dtype_size(t.view.dtype);
    if (nbytes > 0 && t.view.data == nullptr) throw Error(at + ": no data");
    json shape = json::array();
    for (int64_t d : t.view.shape) shape.push_back(d);
    header[t.name] = {{"dtype", dtype_name(t.view.dtype)},
                      {"shape", shape},
                      {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  // Metadata text may hold bytes that are not UTF-8 (a recording's text cut inside a multi-byte
  // character, a tokenizer's byte pieces): written as U+FFFD rather than failing the write.
  std::string text = header.dump(-1, ' ', false, json::error_handler_t::replace);
  // The format allows trailing spaces in the header; pad so the data area starts 8-aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i));

  require_replaceable(path);  // the rename below would replace a device, FIFO or symlink
  const std::filesystem::path target(path);
  const std::filesystem::path dir =
      target.parent_path().empty() ? std::filesystem::path(".") : target.parent_path();
  std::string tmp_name = target.filename().string();
  tmp_name.insert(0, 1, '.');
  tmp_name.append(".tmp.XXXXXX");
  std::string tmp = (dir / tmp_name).string();
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0)
    throw Error(path + ": cannot create a temporary file in " + dir.string() + " (" + errno_text() +
                ")");
  try {
    write_all(fd, len_bytes, 8, path);
    write_all(fd, text.data(), text.size(), path);
    for (const NamedTensor& t : tensors) write_all(fd, t.view.data, t.view.nbytes(), path);
    if (::fchmod(fd, 0644) != 0 || ::fsync(fd) != 0)
      throw Error(path + ": cannot sync (" + errno_text() + ")");
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    throw Error(path + ": close failed (" + why + ")");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    throw Error(path + ": rename from temporary file failed (" + why + ")");
  }
  // Make the rename itself durable.
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace kvq
