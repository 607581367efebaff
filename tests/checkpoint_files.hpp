#pragma once
// Test helpers: a small valid checkpoint and the ways to damage one (serial HDF5).
#include <hdf5.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "eplb/runtime/checkpoint.hpp"
#include "eplb/runtime/h5.hpp"

namespace eplb::test {

using runtime::h5::H5File;
using runtime::h5::H5Object;

/// L=2 E=4 R=6 P=2, W=3, two stats rows.
inline runtime::Checkpoint small_checkpoint() {
  runtime::Checkpoint c;
  auto& t = c.config.topology;
  t = algo::Topology{2, 4, 6, 2, 1, 2};
  c.config.policy = "deepseek";
  c.config.window_passes = 3;
  c.config.rebalance_interval = 10;
  c.config.first_rebalance = 5;
  c.config.min_gain = 0.01;
  c.config.staging_bytes = 4096;
  c.config.weight_layout_hash = 0x1234abcdULL;
  c.epoch = 7;
  c.pass = 55;
  c.window_cursor = 1;
  for (int i = 0; i < 3 * 2 * 4; ++i) c.window.push_back(i * 3 + 1);
  c.phy2log = {0, 1, 2, 3, 0, 1, 3, 2, 1, 0, 3, 3};
  runtime::CheckpointStatsRow r;
  r.epoch = 6;
  r.pass = 45;
  r.balancedness_before = 0.7;
  r.balancedness_after = 0.9;
  r.slots_changed = 3;
  r.total_remote_bytes = 12345;
  c.stats.push_back(r);
  r.epoch = 7;
  r.pass = 55;
  r.skipped = 1;
  r.skip_reason = "placement unchanged";
  c.stats.push_back(r);
  return c;
}

/// Opens `path` read-write for an edit (HDF5 errors throw H5Error).
inline H5File edit(const std::string& path) { return H5File::open(path, true); }

/// File offset of the first byte of a chunked dataset's first chunk.
inline std::uint64_t first_chunk_offset(const std::string& path, const char* dataset) {
  auto f = H5File::open(path);
  const auto d = H5Object::dataset(EPLB_H5_CHECK(H5Dopen2(f.get(), dataset, H5P_DEFAULT)));
  const auto space = H5Object::dataspace(EPLB_H5_CHECK(H5Dget_space(d.get())));
  hsize_t coords[3] = {0, 0, 0};
  unsigned mask = 0;
  haddr_t addr = 0;
  hsize_t size = 0;
  EPLB_H5_CHECK(H5Dget_chunk_info(d.get(), space.get(), 0, coords, &mask, &addr, &size));
  return addr;
}

inline void flip_byte(const std::string& path, std::uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char b = 0;
  f.get(b);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(b ^ 0x5a));
  if (!f.flush()) throw std::runtime_error("cannot flip a byte of " + path);
}

inline void set_int_attr(const std::string& path, const char* name, int value) {
  auto f = edit(path);
  {
    const auto a = H5Object::attribute(EPLB_H5_CHECK(H5Aopen(f.get(), name, H5P_DEFAULT)));
    EPLB_H5_CHECK(H5Awrite(a.get(), H5T_NATIVE_INT, &value));
  }
  f.close();
}

inline void delete_link(const std::string& path, const char* name) {
  auto f = edit(path);
  EPLB_H5_CHECK(H5Ldelete(f.get(), name, H5P_DEFAULT));
  f.close();
}

/// Replaces dataset `name` by a contiguous one of `type` and shape `dims` (zero-filled).
inline void replace_dataset(const std::string& path, const char* name, hid_t type,
                            std::vector<hsize_t> dims) {
  auto f = edit(path);
  EPLB_H5_CHECK(H5Ldelete(f.get(), name, H5P_DEFAULT));
  {
    const auto space = H5Object::dataspace(
        EPLB_H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)));
    const auto d = H5Object::dataset(EPLB_H5_CHECK(
        H5Dcreate2(f.get(), name, type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)));
    std::size_t n = 1;
    for (auto v : dims) n *= v;
    std::vector<double> zeros(n, 0.0);
    EPLB_H5_CHECK(
        H5Dwrite(d.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros.data()));
  }
  f.close();
}

inline void truncate_to_half(const std::string& path) {
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
}

}  // namespace eplb::test
