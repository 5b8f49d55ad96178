#include "engine/safetensors.hpp"

#include <fcntl.h>
#include <simdjson.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <unordered_map>

namespace troupe {
namespace {

// The limit the reference implementation (huggingface/safetensors) enforces; a larger length is a
// corrupt or hostile file, and we would otherwise copy it into a parser buffer.
constexpr uint64_t max_header_bytes = 100'000'000;

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& what) {
  throw WeightError(path.string() + ": " + what);
}

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& tensor, const std::string& what) {
  throw WeightError(path.string() + ": tensor '" + tensor + "': " + what);
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool parse_dtype(std::string_view name, DType& out) {
  for (DType t : {DType::f32, DType::f16, DType::bf16, DType::i32, DType::i64, DType::u8}) {
    if (dtype_name(t) == name) {
      out = t;
      return true;
    }
  }
  return false;
}

// Bytes that `shape` of `dtype` occupies; false when the count does not fit in 64 bits.
bool byte_size(const std::vector<int64_t>& shape, DType dtype, uint64_t& bytes) {
  uint64_t n = dtype_size(dtype);
  for (int64_t s : shape) {
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(s), &n)) return false;
  }
  // HostView::numel() is int64_t, so a count that fits in uint64_t only is still unusable.
  if (n > static_cast<uint64_t>(INT64_MAX)) return false;
  bytes = n;
  return true;
}

uint64_t read_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

struct SafetensorsFile::Mapping {
  std::filesystem::path path;
  const unsigned char* base = nullptr;  // the whole file, mapped read-only
  size_t size = 0;
  const unsigned char* data = nullptr;  // the data section, after the header
  std::vector<TensorInfo> tensors;      // in data-section order
  std::unordered_map<std::string, size_t> index;
  std::map<std::string, std::string> metadata;

  ~Mapping() {
    if (base != nullptr) ::munmap(const_cast<unsigned char*>(base), size);
  }

  void parse_header(std::string_view header, uint64_t data_bytes);
  TensorInfo parse_entry(std::string_view name, simdjson::dom::element value, uint64_t data_bytes) const;
  void check_no_overlap() const;
};

TensorInfo SafetensorsFile::Mapping::parse_entry(std::string_view key, simdjson::dom::element value,
                                                 uint64_t data_bytes) const {
  TensorInfo t;
  t.name = std::string(key);
  simdjson::dom::object entry;
  if (value.get_object().get(entry) != simdjson::SUCCESS) fail(path, t.name, "header entry is not an object");

  std::string_view dtype_text;
  if (entry["dtype"].get_string().get(dtype_text) != simdjson::SUCCESS)
    fail(path, t.name, "missing or non-string 'dtype'");
  if (!parse_dtype(dtype_text, t.dtype))
    fail(path, t.name, "unsupported dtype '" + std::string(dtype_text) + "' (supported: F32, F16, BF16, I32, I64, U8)");

  simdjson::dom::array shape;
  if (entry["shape"].get_array().get(shape) != simdjson::SUCCESS) fail(path, t.name, "missing or non-list 'shape'");
  for (simdjson::dom::element dim : shape) {
    int64_t d;
    if (dim.get_int64().get(d) != simdjson::SUCCESS) fail(path, t.name, "shape entries must be integers");
    if (d < 0) fail(path, t.name, "negative dimension " + std::to_string(d) + " in shape");
    t.shape.push_back(d);
  }

  simdjson::dom::array offsets;
  if (entry["data_offsets"].get_array().get(offsets) != simdjson::SUCCESS || offsets.size() != 2)
    fail(path, t.name, "'data_offsets' must be a list [begin, end]");
  uint64_t bounds[2];
  size_t i = 0;
  for (simdjson::dom::element o : offsets) {
    if (o.get_uint64().get(bounds[i++]) != simdjson::SUCCESS)
      fail(path, t.name, "'data_offsets' must hold non-negative integers");
  }
  t.begin = bounds[0];
  t.end = bounds[1];
  std::string span = "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
  if (t.begin > t.end) fail(path, t.name, span + " are reversed");
  if (t.end > data_bytes)
    fail(path, t.name, span + " run past the end of the data section (" + std::to_string(data_bytes) + " bytes)");

  uint64_t need;
  if (!byte_size(t.shape, t.dtype, need))
    fail(path, t.name, "shape " + shape_text(t.shape) + " has too many elements");
  if (t.end - t.begin != need)
    fail(path, t.name, span + " hold " + std::to_string(t.end - t.begin) + " bytes but shape " + shape_text(t.shape) +
                           " of " + std::string(dtype_name(t.dtype)) + " needs " + std::to_string(need));
  return t;
}

void SafetensorsFile::Mapping::parse_header(std::string_view header, uint64_t data_bytes) {
  simdjson::dom::parser parser;
  simdjson::padded_string padded(header);
  simdjson::dom::element doc;
  if (auto err = parser.parse(padded).get(doc); err)
    fail(path, std::string("header is not valid JSON (") + simdjson::error_message(err) + ")");
  simdjson::dom::object root;
  if (doc.get_object().get(root) != simdjson::SUCCESS) fail(path, "header is not a JSON object");

  for (auto field : root) {
    if (field.key == "__metadata__") {
      simdjson::dom::object meta;
      if (field.value.get_object().get(meta) != simdjson::SUCCESS) fail(path, "'__metadata__' is not an object");
      for (auto m : meta) {
        std::string_view v;
        if (m.value.get_string().get(v) != simdjson::SUCCESS)
          fail(path, "'__metadata__' value of '" + std::string(m.key) + "' is not a string");
        metadata[std::string(m.key)] = std::string(v);
      }
      continue;
    }
    TensorInfo t = parse_entry(field.key, field.value, data_bytes);
    if (index.count(t.name) != 0) fail(path, t.name, "appears twice in the header");
    index.emplace(t.name, tensors.size());
    tensors.push_back(std::move(t));
  }

  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 0; i < tensors.size(); ++i) index[tensors[i].name] = i;
  check_no_overlap();
}

// Empty tensors hold no bytes, so they cannot overlap anything wherever their offsets point.
void SafetensorsFile::Mapping::check_no_overlap() const {
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& t : tensors) {
    if (t.begin == t.end) continue;
    if (previous != nullptr && t.begin < previous->end)
      fail(path, t.name,
           "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] overlap tensor '" +
               previous->name + "' at [" + std::to_string(previous->begin) + ", " + std::to_string(previous->end) + "]");
    previous = &t;
  }
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  auto m = std::make_shared<Mapping>();
  m->path = path;

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail(path, std::string("cannot stat: ") + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file");
  }
  m->size = static_cast<size_t>(st.st_size);
  if (m->size < 8) {
    ::close(fd);
    fail(path, "file is " + std::to_string(m->size) + " bytes, too short for the 8-byte header length");
  }
  void* p = ::mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (p == MAP_FAILED) fail(path, std::string("cannot mmap: ") + std::strerror(map_errno));
  m->base = static_cast<const unsigned char*>(p);

  uint64_t header_len = read_le64(m->base);
  if (header_len > max_header_bytes)
    fail(path, "header length " + std::to_string(header_len) + " exceeds the " + std::to_string(max_header_bytes) +
                   "-byte limit (corrupt file?)");
  if (header_len > m->size - 8)
    fail(path, "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                   std::to_string(m->size) + " bytes; truncated?)");
  m->data = m->base + 8 + header_len;
  m->parse_header(std::string_view(reinterpret_cast<const char*>(m->base + 8), header_len), m->size - 8 - header_len);

  SafetensorsFile f;
  f.mapping_ = std::move(m);
  return f;
}

const std::filesystem::path& SafetensorsFile::path() const { return mapping_->path; }
const std::vector<TensorInfo>& SafetensorsFile::tensors() const { return mapping_->tensors; }
const std::map<std::string, std::string>& SafetensorsFile::metadata() const { return mapping_->metadata; }
bool SafetensorsFile::contains(const std::string& name) const { return mapping_->index.count(name) != 0; }

HostView SafetensorsFile::tensor(const std::string& name) const {
  auto it = mapping_->index.find(name);
  if (it == mapping_->index.end()) fail(mapping_->path, "missing tensor '" + name + "'");
  const TensorInfo& t = mapping_->tensors[it->second];
  return HostView{mapping_->data + t.begin, t.dtype, t.shape};
}

// ---------------------------------------------------------------------------------------------------
// WeightFiles

namespace {

constexpr const char* single_file_name = "model.safetensors";
constexpr const char* index_file_name = "model.safetensors.index.json";

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// weight_map of an index file, name -> shard file name, in the index's order.
std::vector<std::pair<std::string, std::string>> read_weight_map(const std::filesystem::path& index_path) {
  std::string text = read_text(index_path);
  simdjson::dom::parser parser;
  simdjson::padded_string padded(text);
  simdjson::dom::element doc;
  if (auto err = parser.parse(padded).get(doc); err)
    fail(index_path, std::string("not valid JSON (") + simdjson::error_message(err) + ")");
  simdjson::dom::object weight_map;
  if (doc["weight_map"].get_object().get(weight_map) != simdjson::SUCCESS)
    fail(index_path, "missing or non-object 'weight_map'");
  std::vector<std::pair<std::string, std::string>> out;
  for (auto field : weight_map) {
    std::string_view file;
    if (field.value.get_string().get(file) != simdjson::SUCCESS)
      fail(index_path, "weight_map entry of tensor '" + std::string(field.key) + "' is not a file name");
    std::filesystem::path rel(file);
    bool escapes = rel.is_absolute() || rel.empty();
    for (const auto& part : rel) escapes = escapes || part == "..";
    if (escapes)
      fail(index_path, "weight_map entry of tensor '" + std::string(field.key) + "' names '" + std::string(file) +
                           "', which is not a file inside the model directory");
    out.emplace_back(std::string(field.key), std::string(file));
  }
  return out;
}

}  // namespace

WeightFiles WeightFiles::open(const std::filesystem::path& model_dir) {
  WeightFiles w;
  w.dir_ = model_dir;
  auto index_path = model_dir / index_file_name;
  auto single_path = model_dir / single_file_name;

  if (std::filesystem::is_regular_file(index_path)) {
    std::map<std::string, size_t> shard_of_file;
    for (const auto& [name, file] : read_weight_map(index_path)) {
      auto [it, added] = shard_of_file.emplace(file, w.files_.size());
      if (added) {
        auto shard_path = model_dir / file;
        if (!std::filesystem::is_regular_file(shard_path))
          fail(index_path, "tensor '" + name + "' is mapped to shard '" + file + "', which does not exist");
        w.files_.push_back(SafetensorsFile::open(shard_path));
      }
      if (!w.files_[it->second].contains(name))
        fail(index_path, "tensor '" + name + "' is mapped to shard '" + file + "', which does not contain it");
      if (!w.where_.emplace(name, it->second).second)
        fail(index_path, "tensor '" + name + "' appears twice in weight_map");
    }
    // Tensors a shard holds beyond its weight_map entries are ignored, as transformers does: the
    // index is what the checkpoint declares.
  } else if (std::filesystem::is_regular_file(single_path)) {
    w.files_.push_back(SafetensorsFile::open(single_path));
    for (const TensorInfo& t : w.files_[0].tensors()) w.where_.emplace(t.name, 0);
  } else {
    fail(model_dir, std::string("no weights: neither ") + single_file_name + " nor " + index_file_name +
                        " is in this directory");
  }
  return w;
}

bool WeightFiles::contains(const std::string& name) const { return where_.count(name) != 0; }

HostView WeightFiles::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(dir_, "missing tensor '" + name + "'");
  return files_[it->second].tensor(name);
}

std::vector<std::string> WeightFiles::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, file] : where_) out.push_back(name);
  return out;  // std::map keeps them sorted
}

uint64_t WeightFiles::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, file] : where_) total += files_[file].tensor(name).nbytes();
  return total;
}

// ---------------------------------------------------------------------------------------------------
// SafetensorsWriter

struct SafetensorsWriter::Impl {
  std::filesystem::path path;
  std::filesystem::path partial;  // written here, renamed to `path` by close()
  std::vector<TensorInfo> entries;
  size_t next = 0;
  int fd = -1;

  void write_all(const void* data, size_t bytes, const std::string& what) {
    const char* p = static_cast<const char*>(data);
    while (bytes > 0) {
      // Linux writes at most ~2 GiB per call; larger tensors (a 150k x 5k embedding) go in pieces.
      size_t piece = std::min<size_t>(bytes, size_t{1} << 30);
      ssize_t n = ::write(fd, p, piece);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail(path, "writing " + what + ": " + std::strerror(errno));
      p += n;
      bytes -= static_cast<size_t>(n);
    }
  }
};

SafetensorsWriter::SafetensorsWriter(const std::filesystem::path& path, std::vector<TensorInfo> entries,
                                     const std::map<std::string, std::string>& metadata)
    : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->partial = path.string() + ".partial";

  // Lay the tensors out back to back in the given order; offsets a caller filled in must agree.
  boost::json::object header;
  if (!metadata.empty()) {
    boost::json::object meta;
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (TensorInfo& t : entries) {
    if (t.name.empty() || t.name == "__metadata__") fail(path, "invalid tensor name '" + t.name + "'");
    if (!seen.insert(t.name).second) fail(path, t.name, "listed twice");
    uint64_t bytes;
    for (int64_t d : t.shape)
      if (d < 0) fail(path, t.name, "negative dimension in shape " + shape_text(t.shape));
    if (!byte_size(t.shape, t.dtype, bytes)) fail(path, t.name, "shape " + shape_text(t.shape) + " is too large");
    bool given = t.begin != 0 || t.end != 0;
    if (given && (t.begin != offset || t.end != offset + bytes))
      fail(path, t.name, "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                             "] do not follow the previous entry (expected [" + std::to_string(offset) + ", " +
                             std::to_string(offset + bytes) + "])");
    t.begin = offset;
    t.end = offset + bytes;
    offset = t.end;

    boost::json::array shape;
    for (int64_t d : t.shape) shape.push_back(d);
    header[t.name] = boost::json::object{{"dtype", std::string(dtype_name(t.dtype))},
                                         {"shape", std::move(shape)},
                                         {"data_offsets", boost::json::array{t.begin, t.end}}};
  }
  impl_->entries = std::move(entries);

  std::string text = boost::json::serialize(header);
  // Pad with spaces to a multiple of 8, as the reference writer does, so the data section (and every
  // tensor of an 8-byte-multiple size before it) stays aligned for direct use from the mapping.
  text.append((8 - text.size() % 8) % 8, ' ');

  impl_->fd = ::open(impl_->partial.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (impl_->fd < 0) fail(impl_->partial, std::string("cannot create: ") + std::strerror(errno));
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  impl_->write_all(len, sizeof len, "the header length");
  impl_->write_all(text.data(), text.size(), "the header");
}

SafetensorsWriter::~SafetensorsWriter() {
  // Not closed: an incomplete file must not be mistaken for weights later.
  if (impl_ && impl_->fd >= 0) {
    ::close(impl_->fd);
    std::error_code ec;
    std::filesystem::remove(impl_->partial, ec);
  }
}

void SafetensorsWriter::write(const std::string& name, const void* data, size_t bytes) {
  Impl& w = *impl_;
  if (w.fd < 0) fail(w.path, name, "written after close()");
  if (w.next >= w.entries.size()) fail(w.path, name, "written but every listed entry has been written already");
  const TensorInfo& t = w.entries[w.next];
  if (t.name != name) fail(w.path, name, "written out of order: the next entry is '" + t.name + "'");
  if (bytes != t.end - t.begin)
    fail(w.path, name, "got " + std::to_string(bytes) + " bytes but shape " + shape_text(t.shape) + " of " +
                           std::string(dtype_name(t.dtype)) + " needs " + std::to_string(t.end - t.begin));
  w.write_all(data, bytes, "tensor '" + name + "'");
  ++w.next;
}

void SafetensorsWriter::close() {
  Impl& w = *impl_;
  if (w.fd < 0) return;
  if (w.next < w.entries.size())
    fail(w.path, w.entries[w.next].name,
         "never written (" + std::to_string(w.entries.size() - w.next) + " of " + std::to_string(w.entries.size()) +
             " entries missing at close())");
  int rc = ::close(w.fd);
  w.fd = -1;
  if (rc != 0) fail(w.path, std::string("closing: ") + std::strerror(errno));
  std::error_code ec;
  std::filesystem::rename(w.partial, w.path, ec);
  if (ec) fail(w.path, "renaming " + w.partial.string() + ": " + ec.message());
}

}  // namespace troupe
