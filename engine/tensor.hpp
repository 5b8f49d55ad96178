// A dense, row-major array on some device. Tensors share storage: a view (reshape, rows) keeps the
// allocation alive through `storage`. Backends allocate them; model code only shapes and passes them.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "engine/dtype.hpp"

namespace troupe {

enum class Device : uint8_t { cpu, cuda };

class Tensor {
 public:
  Tensor() = default;
  Tensor(void* data, DType dtype, std::vector<int64_t> shape, Device device, std::shared_ptr<void> storage)
      : data_(data), dtype_(dtype), device_(device), shape_(std::move(shape)), storage_(std::move(storage)) {}

  bool defined() const { return data_ != nullptr || !shape_.empty(); }
  void* data() const { return data_; }
  template <class T>
  T* as() const { return static_cast<T*>(data_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t size(int d) const { return shape_.at(d < 0 ? d + rank() : d); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape_) n *= s;
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  // Elements in one index of dimension 0.
  int64_t row_numel() const { return shape_.empty() || shape_[0] == 0 ? 0 : numel() / shape_[0]; }

  // Same elements, another shape (numel must match).
  Tensor reshape(std::vector<int64_t> shape) const;
  // Indices [begin, end) of dimension 0: contiguous, so still a plain tensor.
  Tensor rows(int64_t begin, int64_t end) const;

  std::string describe() const;  // "bf16[4, 1024] on cuda", for error messages

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
  std::vector<int64_t> shape_;
  std::shared_ptr<void> storage_;
};

// A read-only tensor in host memory that we do not own (a memory-mapped weight, a caller's buffer).
struct HostView {
  const void* data = nullptr;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  // Indices [begin, end) of dimension 0.
  HostView rows(int64_t begin, int64_t end) const;
};

}  // namespace troupe
