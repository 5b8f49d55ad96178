// Hugging Face safetensors: reading (memory-mapped, every header entry validated before use) and
// writing (streamed, so a 16 GB checkpoint never sits in memory).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/tensor.hpp"

namespace troupe {

// A malformed or incomplete weight file; the message names the file and, where it applies, the tensor.
class WeightError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TensorInfo {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
};

// One .safetensors file, memory-mapped read-only. Views returned by tensor() stay valid as long as any
// copy of this object lives.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const;
  const std::vector<TensorInfo>& tensors() const;  // in the order of their bytes in the file
  const std::map<std::string, std::string>& metadata() const;
  bool contains(const std::string& name) const;
  HostView tensor(const std::string& name) const;

 private:
  struct Mapping;
  std::shared_ptr<const Mapping> mapping_;
};

// A model directory's weights: model.safetensors, or the shards named by model.safetensors.index.json.
class WeightFiles {
 public:
  static WeightFiles open(const std::filesystem::path& model_dir);

  bool contains(const std::string& name) const;
  HostView get(const std::string& name) const;  // WeightError "...: missing tensor 'name'" when absent
  std::vector<std::string> names() const;       // sorted
  uint64_t total_bytes() const;

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
  std::filesystem::path dir_;
};

// Writes one .safetensors file: the header from the full list of entries first, then each tensor's
// bytes in the same order through write(). The writer lays the tensors out back to back in that order;
// entries may leave begin/end at 0 (offsets given must match that layout). The file appears under its
// name only when close() succeeds.
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::filesystem::path& path, std::vector<TensorInfo> entries,
                    const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // The next entry's bytes (exactly end - begin of it).
  void write(const std::string& name, const void* data, size_t bytes);
  void close();  // throws if some entry was never written

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe
