// An owning device allocation (cudaMalloc / cudaFree) with host<->device copies that check
// every CUDA call. Plain allocations only (device README: no managed memory).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <span>
#include <utility>
#include <vector>

#include "backends/cuda/cuda_error.h"

namespace kvq::cuda {

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (count_ > 0) check(cudaMalloc(reinterpret_cast<void**>(&data_), bytes()), "cudaMalloc");
  }
  explicit DeviceBuffer(std::span<const T> host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() {
    if (data_) cudaFree(data_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(count_, other.count_);
    return *this;
  }

  T* get() const { return data_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

  void upload(std::span<const T> host) {
    if (host.size() != count_) throw Error("cuda: upload size does not match the buffer");
    if (count_ > 0)
      check(cudaMemcpy(data_, host.data(), bytes(), cudaMemcpyHostToDevice), "upload");
  }
  void zero() {
    if (count_ > 0) check(cudaMemset(data_, 0, bytes()), "cudaMemset");
  }
  void fill_bytes(int value) {
    if (count_ > 0) check(cudaMemset(data_, value, bytes()), "cudaMemset");
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    if (count_ > 0)
      check(cudaMemcpy(host.data(), data_, bytes(), cudaMemcpyDeviceToHost), "download");
    return host;
  }
  void download_to(std::span<T> host) const {
    if (host.size() != count_) throw Error("cuda: download size does not match the buffer");
    if (count_ > 0)
      check(cudaMemcpy(host.data(), data_, bytes(), cudaMemcpyDeviceToHost), "download");
  }

 private:
  T* data_ = nullptr;
  size_t count_ = 0;
};

}  // namespace kvq::cuda
