#include "engine/tensor.hpp"

#include <sstream>
#include <stdexcept>

namespace troupe {

Tensor Tensor::reshape(std::vector<int64_t> shape) const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  if (n != numel()) throw std::invalid_argument("reshape of " + describe() + ": element count differs");
  return Tensor(data_, dtype_, std::move(shape), device_, storage_);
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  if (shape_.empty() || begin < 0 || end < begin || end > shape_[0])
    throw std::out_of_range("rows [" + std::to_string(begin) + ", " + std::to_string(end) + ") of " + describe());
  auto shape = shape_;
  shape[0] = end - begin;
  char* p = static_cast<char*>(data_) + static_cast<size_t>(begin * row_numel()) * dtype_size(dtype_);
  return Tensor(p, dtype_, std::move(shape), device_, storage_);
}

std::string Tensor::describe() const {
  std::ostringstream out;
  out << dtype_name(dtype_) << "[";
  for (size_t i = 0; i < shape_.size(); ++i) out << (i ? ", " : "") << shape_[i];
  out << "] on " << (device_ == Device::cpu ? "cpu" : "cuda");
  return out.str();
}

HostView HostView::rows(int64_t begin, int64_t end) const {
  if (shape.empty() || begin < 0 || end < begin || end > shape[0])
    throw std::out_of_range("rows [" + std::to_string(begin) + ", " + std::to_string(end) + ") of a host tensor");
  HostView v = *this;
  v.shape[0] = end - begin;
  int64_t row = shape[0] == 0 ? 0 : numel() / shape[0];
  v.data = static_cast<const char*>(data) + static_cast<size_t>(begin * row) * dtype_size(dtype);
  return v;
}

}  // namespace troupe
