#include "eplb/runtime/checkpoint.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <limits>
#include <new>
#include <sstream>
#include <utility>

#include "eplb/algo/io.hpp"
#include "eplb/algo/load.hpp"
#include "eplb/algo/placement.hpp"
#include "eplb/config.hpp"
#include "eplb/runtime/h5.hpp"

namespace eplb::runtime {
namespace {

using h5::H5File;
using h5::H5Object;

// ---- names of the schema (docs/CHECKPOINT.md) -------------------------------------------
constexpr const char* kPhy2log = "phy2log";
constexpr const char* kWindow = "window";
constexpr const char* kStats = "rebalance_stats";

// ---- small helpers ------------------------------------------------------------------------

std::uint64_t fnv(std::uint64_t h, const void* data, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}
template <class T>
std::uint64_t fnv_value(std::uint64_t h, T v) {
  return fnv(h, &v, sizeof v);
}

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string shape_text(const std::vector<hsize_t>& d) {
  std::string s;
  for (auto v : d) {
    s += '[';
    s += std::to_string(v);
    s += ']';
  }
  return s.empty() ? "scalar" : s;
}

std::string type_text(hid_t t) {
  const H5T_class_t c = H5Tget_class(t);
  const std::size_t size = H5Tget_size(t);
  switch (c) {
    case H5T_INTEGER:
      return std::string(H5Tget_sign(t) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(8 * size);
    case H5T_FLOAT: return "float" + std::to_string(8 * size);
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    case H5T_ARRAY: return "array";
    case H5T_VLEN: return "variable-length sequence";
    default: return "HDF5 class " + std::to_string(static_cast<int>(c));
  }
}

// ---- attributes ---------------------------------------------------------------------------

H5Object scalar_space() { return H5Object::dataspace(EPLB_H5_CHECK(H5Screate(H5S_SCALAR))); }

void put_attr(hid_t loc, const char* name, hid_t file_type, hid_t mem_type, const void* v) {
  const auto space = scalar_space();
  auto a = H5Object::attribute(
      EPLB_H5_CHECK(H5Acreate2(loc, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT)));
  EPLB_H5_CHECK(H5Awrite(a.get(), mem_type, v));
  a.close();
}
void put_i64(hid_t loc, const char* name, std::int64_t v) {
  put_attr(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}
void put_i32(hid_t loc, const char* name, std::int32_t v) {
  put_attr(loc, name, H5T_STD_I32LE, H5T_NATIVE_INT32, &v);
}
void put_u64(hid_t loc, const char* name, std::uint64_t v) {
  put_attr(loc, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v);
}
void put_f64(hid_t loc, const char* name, double v) {
  put_attr(loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v);
}
void put_str(hid_t loc, const char* name, const std::string& v) {
  const auto t = H5Object::datatype(EPLB_H5_CHECK(H5Tcopy(H5T_C_S1)));
  EPLB_H5_CHECK(H5Tset_size(t.get(), v.size() + 1));
  EPLB_H5_CHECK(H5Tset_strpad(t.get(), H5T_STR_NULLTERM));
  put_attr(loc, name, t.get(), t.get(), v.c_str());
}

/// Reading: a missing attribute or one of the wrong class is a CheckpointError.
class Reader {
 public:
  explicit Reader(std::string path) : path_(std::move(path)) {}

  [[noreturn]] void bad(const std::string& what) const {
    throw CheckpointError("checkpoint '" + path_ + "': " + what);
  }

  H5Object open_attr(hid_t loc, const char* name, const char* where) const {
    htri_t exists = 0;
    H5Object a;
    try {  // a damaged object header fails its checksum here
      exists = EPLB_H5_CHECK(H5Aexists(loc, name));
      if (exists > 0) a = H5Object::attribute(EPLB_H5_CHECK(H5Aopen(loc, name, H5P_DEFAULT)));
    } catch (const H5Error& e) {
      bad(std::string("attribute '") + name + "' cannot be read (damaged header?): " + e.what());
    }
    if (exists <= 0) bad(std::string("missing attribute '") + name + "'" + where);
    const auto space = H5Object::dataspace(EPLB_H5_CHECK(H5Aget_space(a.get())));
    if (EPLB_H5_CHECK(H5Sget_simple_extent_npoints(space.get())) != 1)
      bad(std::string("attribute '") + name + "' is not a scalar");
    return a;
  }

  template <class T>
  T number(hid_t loc, const char* name, const char* where = "") const {
    const auto a = open_attr(loc, name, where);
    const auto t = H5Object::datatype(EPLB_H5_CHECK(H5Aget_type(a.get())));
    const H5T_class_t c = H5Tget_class(t.get());
    const bool want_int = std::is_integral_v<T>;
    if (want_int ? c != H5T_INTEGER : (c != H5T_FLOAT && c != H5T_INTEGER))
      bad(std::string("attribute '") + name + "' has type " + type_text(t.get()) + ", expected " +
          (want_int ? "an integer" : "a number"));
    if constexpr (std::is_integral_v<T>) {
      // Read at 64 bits and range-check here: HDF5's conversion to a narrower type clamps
      // silently (num_layers = 2^32 + 4 would become 2^31 - 1).
      if (H5Tget_size(t.get()) > 8)
        bad(std::string("attribute '") + name + "' has type " + type_text(t.get()) +
            ", expected at most 64 bits");
      const auto narrow = [&](auto v) {
        if (!std::in_range<T>(v))
          bad(std::string("attribute '") + name + "' = " + std::to_string(v) +
              " is outside the range of " + (std::is_signed_v<T> ? "int" : "uint") +
              std::to_string(8 * sizeof(T)));
        return static_cast<T>(v);
      };
      if (H5Tget_sign(t.get()) == H5T_SGN_NONE) {
        std::uint64_t v = 0;
        EPLB_H5_CHECK(H5Aread(a.get(), H5T_NATIVE_UINT64, &v));
        return narrow(v);
      }
      std::int64_t v = 0;
      EPLB_H5_CHECK(H5Aread(a.get(), H5T_NATIVE_INT64, &v));
      return narrow(v);
    } else {
      T v{};
      EPLB_H5_CHECK(H5Aread(a.get(), H5T_NATIVE_DOUBLE, &v));
      return v;
    }
  }

  std::string string(hid_t loc, const char* name) const {
    const auto a = open_attr(loc, name, "");
    const auto t = H5Object::datatype(EPLB_H5_CHECK(H5Aget_type(a.get())));
    if (H5Tget_class(t.get()) != H5T_STRING)
      bad(std::string("attribute '") + name + "' has type " + type_text(t.get()) +
          ", expected a string");
    if (EPLB_H5_CHECK(H5Tis_variable_str(t.get())) > 0) {
      char* p = nullptr;
      const auto mem = H5Object::datatype(EPLB_H5_CHECK(H5Tcopy(H5T_C_S1)));
      EPLB_H5_CHECK(H5Tset_size(mem.get(), H5T_VARIABLE));
      EPLB_H5_CHECK(H5Aread(a.get(), mem.get(), &p));
      std::string s = p ? p : "";
      H5free_memory(p);
      return s;
    }
    std::string buf(H5Tget_size(t.get()), '\0');
    EPLB_H5_CHECK(H5Aread(a.get(), t.get(), buf.data()));
    buf.resize(std::strlen(buf.c_str()));
    return buf;
  }

  /// Opens dataset `name`; missing or with a header HDF5 cannot decode is a CheckpointError.
  /// Only a hard link is followed: a soft or external link could lead to another file (one
  /// that does not exist, or a FIFO whose open never returns) before anything is checked.
  H5Object open_dataset(hid_t file, const char* name) const {
    if (EPLB_H5_CHECK(H5Lexists(file, name, H5P_DEFAULT)) <= 0)
      bad(std::string("missing dataset '") + name + "'");
    H5L_info_t link{};
    EPLB_H5_CHECK(H5Lget_info(file, name, &link, H5P_DEFAULT));
    if (link.type != H5L_TYPE_HARD)
      bad(std::string("'") + name + "' is " +
          (link.type == H5L_TYPE_SOFT ? "a soft" : link.type == H5L_TYPE_EXTERNAL ? "an external" : "a user-defined") +
          " link, not a dataset stored in this file (eplb writes none; not followed)");
    H5Object d;
    try {
      d = H5Object::dataset(EPLB_H5_CHECK(H5Dopen2(file, name, H5P_DEFAULT)));
    } catch (const H5Error& e) {
      bad(std::string("dataset '") + name + "' cannot be opened (damaged header?): " + e.what());
    }
    check_stored_here(d, name);
    return d;
  }

  /// Data kept outside the file (a virtual dataset's sources, an external file list) is read
  /// from paths the file names: any file, /dev/zero, or a FIFO whose open never returns (and
  /// resume_from_checkpoint's other ranks would wait for rank 0 without end). Checked right
  /// after the open, before anything else asks HDF5 about the dataset (H5Dget_space of a
  /// virtual dataset with an unlimited mapping opens its source files); Fletcher32 covers only
  /// chunks stored in the file, so such data is rejected, not checked.
  void check_stored_here(const H5Object& d, const char* name) const {
    const auto dcpl = H5Object::plist(EPLB_H5_CHECK(H5Dget_create_plist(d.get())));
    const H5D_layout_t layout = H5Pget_layout(dcpl.get());
    if (layout < 0) h5::fail("H5Pget_layout(dcpl.get())", __FILE__, __LINE__);
    if (layout == H5D_VIRTUAL)
      bad(std::string("dataset '") + name + "' is a virtual dataset (its data lives in other files)");
    if (const int ext = EPLB_H5_CHECK(H5Pget_external_count(dcpl.get())); ext > 0)
      bad(std::string("dataset '") + name + "' keeps its data in " + std::to_string(ext) +
          " external file(s), not in the checkpoint file");
  }

  /// Opens a dataset after checking that it exists, its class / size / sign and its shape.
  H5Object dataset(hid_t file, const char* name, H5T_class_t cls, std::size_t size, bool is_signed,
                   const std::vector<hsize_t>& shape, const char* shape_names) const {
    auto d = open_dataset(file, name);
    const auto t = H5Object::datatype(EPLB_H5_CHECK(H5Dget_type(d.get())));
    const bool type_ok =
        H5Tget_class(t.get()) == cls &&
        (cls == H5T_COMPOUND ||
         (H5Tget_size(t.get()) == size && (H5Tget_sign(t.get()) == H5T_SGN_2) == is_signed));
    if (!type_ok) {
      std::string want = cls == H5T_COMPOUND ? "compound"
                         : std::string(is_signed ? "int" : "uint") + std::to_string(8 * size);
      bad(std::string("dataset '") + name + "' has dtype " + type_text(t.get()) + ", expected " +
          want);
    }
    const auto space = H5Object::dataspace(EPLB_H5_CHECK(H5Dget_space(d.get())));
    const int rank = EPLB_H5_CHECK(H5Sget_simple_extent_ndims(space.get()));
    std::vector<hsize_t> dims(static_cast<std::size_t>(std::max(rank, 0)));
    EPLB_H5_CHECK(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr));
    if (dims != shape)
      bad(std::string("dataset '") + name + "' has shape " + shape_text(dims) + ", expected " +
          shape_text(shape) + " (" + shape_names + ")");
    return d;
  }

  /// The storage layout of dataset `d` (shape `dims`, checked by dataset()), before anything
  /// is read: HDF5 1.10 trusts the chunk dimensions of the file, and a chunk rank other than
  /// the dataset's or a chunk larger than the data makes H5Dread crash or allocate without
  /// bound. A fixed dimension's chunk must lie in [1, dim] (what HDF5 itself allows when it
  /// creates a dataset); an extendible dimension's in [1, max(dim, kMaxExtendibleChunk)]
  /// (eplb's only extendible dimension is the stats table's, written in chunks of min(256,
  /// rows) rows). Returns the chunk shape (empty: not chunked) and whether a filter changes the
  /// stored size (compression: anything but Fletcher32 and shuffle).
  struct Layout {
    std::vector<hsize_t> chunk;
    bool compressed = false;
  };
  Layout check_layout(const H5Object& d, const char* name, const std::vector<hsize_t>& dims) const {
    constexpr hsize_t kMaxExtendibleChunk = 1024;
    const auto dcpl = H5Object::plist(EPLB_H5_CHECK(H5Dget_create_plist(d.get())));
    const H5D_layout_t layout = H5Pget_layout(dcpl.get());
    if (layout < 0) h5::fail("H5Pget_layout(dcpl.get())", __FILE__, __LINE__);
    if (layout != H5D_CHUNKED) return {};  // (virtual and external: open_dataset rejected them)
    std::vector<hsize_t> chunk(H5S_MAX_RANK + 1, 0);
    const int rank =
        EPLB_H5_CHECK(H5Pget_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()));
    chunk.resize(static_cast<std::size_t>(std::clamp(rank, 0, H5S_MAX_RANK + 1)));
    std::vector<hsize_t> maxdims(dims.size());
    {
      const auto space = H5Object::dataspace(EPLB_H5_CHECK(H5Dget_space(d.get())));
      std::vector<hsize_t> cur(dims.size());
      EPLB_H5_CHECK(H5Sget_simple_extent_dims(space.get(), cur.data(), maxdims.data()));
    }
    bool fits = chunk.size() == dims.size();
    for (std::size_t i = 0; fits && i < dims.size(); ++i)
      fits = chunk[i] >= 1 &&
             chunk[i] <= (maxdims[i] == dims[i] ? dims[i] : std::max(dims[i], kMaxExtendibleChunk));
    if (!fits)
      bad(std::string("dataset '") + name + "' has chunks " + shape_text(chunk) +
          " that do not fit its shape " + shape_text(dims) + " (damaged layout)");
    bool compressed = false;
    const int nfilters = EPLB_H5_CHECK(H5Pget_nfilters(dcpl.get()));
    for (int i = 0; i < nfilters; ++i) {
      unsigned flags = 0, config = 0;
      std::size_t ncd = 0;
      const H5Z_filter_t f = EPLB_H5_CHECK(
          H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &ncd, nullptr, 0, nullptr, &config));
      // HDF5's own filters only: another filter id is a plugin that HDF5 would look for on
      // HDF5_PLUGIN_PATH and load (foreign code) to read the data.
      if (f != H5Z_FILTER_FLETCHER32 && f != H5Z_FILTER_SHUFFLE && f != H5Z_FILTER_DEFLATE &&
          f != H5Z_FILTER_SZIP && f != H5Z_FILTER_NBIT && f != H5Z_FILTER_SCALEOFFSET)
        bad(std::string("dataset '") + name + "' uses filter " + std::to_string(f) +
            ", which is not built into HDF5 (a plugin; not loaded)");
      compressed = compressed || (f != H5Z_FILTER_FLETCHER32 && f != H5Z_FILTER_SHUFFLE);
    }
    return {std::move(chunk), compressed};
  }

  /// Bytes of the file that holds dataset `d`.
  static hsize_t file_size(const H5Object& d) {
    hsize_t bytes = 0;
    const auto f = H5Object::file(EPLB_H5_CHECK(H5Iget_file_id(d.get())));
    EPLB_H5_CHECK(H5Fget_filesize(f.get(), &bytes));
    return bytes;
  }

  /// Elements of a dataset of shape `dims` (checked by dataset()) with `elem_bytes` per element
  /// in the file, before anything is allocated for them: the layout must fit (check_layout),
  /// the product must not overflow or pass kMaxElements, and the file must hold the dataset's
  /// data. Uncompressed: at least that many bytes, in the dataset and in the whole file (a small
  /// file declaring a huge shape whose chunks were never written is rejected here instead of
  /// allocating memory for fill values). Compressed (the stored size says nothing about the
  /// shape): every chunk the shape needs; the data itself is checked by the filters on read.
  std::size_t elements(const H5Object& d, const char* name, const std::vector<hsize_t>& dims,
                       std::size_t elem_bytes) const {
    constexpr std::uint64_t kMaxElements = std::uint64_t{1} << 32;
    const Layout layout = check_layout(d, name, dims);
    std::uint64_t n = 1;
    for (const hsize_t x : dims) {
      if (x != 0 && n > kMaxElements / x)
        bad(std::string("dataset '") + name + "' has shape " + shape_text(dims) +
            ": more than 2^32 elements");
      n *= x;
    }
    if (n == 0) return 0;
    if (elem_bytes == 0 || n > std::numeric_limits<std::uint64_t>::max() / elem_bytes)
      bad(std::string("dataset '") + name + "' has elements of " + std::to_string(elem_bytes) +
          " bytes");
    if (layout.compressed) {  // filters need chunks: layout.chunk is the checked chunk shape
      const std::vector<hsize_t>& chunk = layout.chunk;
      hsize_t needed = 1, stored = 0;
      for (std::size_t i = 0; i < dims.size(); ++i) needed *= (dims[i] + chunk[i] - 1) / chunk[i];
      const auto space = H5Object::dataspace(EPLB_H5_CHECK(H5Dget_space(d.get())));
      EPLB_H5_CHECK(H5Dget_num_chunks(d.get(), space.get(), &stored));
      if (stored < needed)
        bad(std::string("dataset '") + name + "' holds " + std::to_string(stored) + " of the " +
            std::to_string(needed) + " chunks its shape " + shape_text(dims) +
            " needs (unwritten or truncated)");
      // Deflate expands at most ~1032x: a small file must not make the reader allocate and
      // zero-fill gigabytes for a shape its compressed data cannot hold.
      constexpr std::uint64_t kMaxRatio = 1100;
      // The stored size is the sum of the chunk sizes the file's chunk index claims: bounded
      // by the file's real size, so that a damaged index cannot claim room for any shape.
      const hsize_t zbytes = std::min<hsize_t>(H5Dget_storage_size(d.get()), file_size(d));
      if (n * elem_bytes / kMaxRatio > zbytes)
        bad(std::string("dataset '") + name + "' declares " + std::to_string(n * elem_bytes) +
            " bytes for its shape " + shape_text(dims) + " but stores " + std::to_string(zbytes) +
            " compressed (more than deflate can expand)");
      return static_cast<std::size_t>(n);
    }
    const hsize_t stored = H5Dget_storage_size(d.get());
    const hsize_t file_bytes = file_size(d);
    if (file_bytes < n * elem_bytes)  // the chunk index may claim more than the file has
      bad(std::string("dataset '") + name + "' needs " + std::to_string(n * elem_bytes) +
          " bytes for its shape " + shape_text(dims) + ", the whole file has " +
          std::to_string(file_bytes));
    if (stored < n * elem_bytes)
      bad(std::string("dataset '") + name + "' holds " + std::to_string(stored) +
          " bytes in the file, its shape " + shape_text(dims) + " needs " +
          std::to_string(n * elem_bytes) + " (unwritten or truncated)");
    return static_cast<std::size_t>(n);
  }

  /// H5Dread with the failure (a Fletcher32 mismatch, a truncated chunk) named by dataset.
  void read(const H5Object& d, const char* name, hid_t mem_type, void* out) const {
    try {
      EPLB_H5_CHECK(H5Dread(d.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out));
    } catch (const H5Error& e) {
      bad(std::string("dataset '") + name + "' is corrupt or unreadable: " + e.what());
    }
  }

 private:
  std::string path_;
};

// ---- datasets -----------------------------------------------------------------------------

/// A chunked dataset with the Fletcher32 filter; zero-length dimensions are made unlimited so
/// that an empty dataset can still be chunked (HDF5 needs chunk dims >= 1).
void put_dataset(hid_t file, const char* name, hid_t file_type, hid_t mem_type,
                 const std::vector<hsize_t>& dims, std::vector<hsize_t> chunk, const void* data) {
  std::vector<hsize_t> maxdims(dims);
  for (std::size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] == 0) maxdims[i] = H5S_UNLIMITED;
    chunk[i] = std::max<hsize_t>(1, dims[i] == 0 ? chunk[i] : std::min(chunk[i], dims[i]));
  }
  const auto space = H5Object::dataspace(EPLB_H5_CHECK(
      H5Screate_simple(static_cast<int>(dims.size()), dims.data(), maxdims.data())));
  const auto dcpl = H5Object::plist(EPLB_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
  EPLB_H5_CHECK(H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()));
  EPLB_H5_CHECK(H5Pset_fletcher32(dcpl.get()));
  auto d = H5Object::dataset(EPLB_H5_CHECK(
      H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT)));
  bool any = true;
  for (auto v : dims) any = any && v > 0;
  if (any) EPLB_H5_CHECK(H5Dwrite(d.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
  d.close();  // writes the cached chunks (in memory: a failure here is HDF5's or out of memory)
}

/// In-memory record of one rebalance_stats row (fixed-size string for a flat compound).
struct StatsRecord {
  std::int64_t epoch, pass;
  std::int32_t skipped;
  double balancedness_before, balancedness_after, imbalance_before, imbalance_after;
  std::int64_t slots_changed, remote_units, local_units, fanout_copies, same_node_remote,
      max_rank_sends, max_rank_recvs;
  std::int32_t max_rounds, migration_rounds;
  std::uint64_t total_remote_bytes, total_local_bytes;
  double t_collect_ms, t_policy_ms, t_broadcast_ms, t_plan_ms, t_migrate_ms, t_total_ms;
  char skip_reason[CheckpointStatsRow::kSkipReasonBytes];
};

struct Member {
  const char* name;
  std::size_t offset;
  hid_t type;  // native; 0 = the skip_reason string
};

std::vector<Member> stats_members() {
#define EPLB_M(f, t) Member{#f, offsetof(StatsRecord, f), t}
  return {EPLB_M(epoch, H5T_NATIVE_INT64),        EPLB_M(pass, H5T_NATIVE_INT64),
          EPLB_M(skipped, H5T_NATIVE_INT32),      EPLB_M(balancedness_before, H5T_NATIVE_DOUBLE),
          EPLB_M(balancedness_after, H5T_NATIVE_DOUBLE),
          EPLB_M(imbalance_before, H5T_NATIVE_DOUBLE), EPLB_M(imbalance_after, H5T_NATIVE_DOUBLE),
          EPLB_M(slots_changed, H5T_NATIVE_INT64), EPLB_M(remote_units, H5T_NATIVE_INT64),
          EPLB_M(local_units, H5T_NATIVE_INT64),  EPLB_M(fanout_copies, H5T_NATIVE_INT64),
          EPLB_M(same_node_remote, H5T_NATIVE_INT64), EPLB_M(max_rank_sends, H5T_NATIVE_INT64),
          EPLB_M(max_rank_recvs, H5T_NATIVE_INT64), EPLB_M(max_rounds, H5T_NATIVE_INT32),
          EPLB_M(migration_rounds, H5T_NATIVE_INT32),
          EPLB_M(total_remote_bytes, H5T_NATIVE_UINT64),
          EPLB_M(total_local_bytes, H5T_NATIVE_UINT64), EPLB_M(t_collect_ms, H5T_NATIVE_DOUBLE),
          EPLB_M(t_policy_ms, H5T_NATIVE_DOUBLE), EPLB_M(t_broadcast_ms, H5T_NATIVE_DOUBLE),
          EPLB_M(t_plan_ms, H5T_NATIVE_DOUBLE),   EPLB_M(t_migrate_ms, H5T_NATIVE_DOUBLE),
          EPLB_M(t_total_ms, H5T_NATIVE_DOUBLE),  EPLB_M(skip_reason, 0)};
#undef EPLB_M
}

H5Object stats_mem_type() {
  auto t = H5Object::datatype(EPLB_H5_CHECK(H5Tcreate(H5T_COMPOUND, sizeof(StatsRecord))));
  const auto str = H5Object::datatype(EPLB_H5_CHECK(H5Tcopy(H5T_C_S1)));
  EPLB_H5_CHECK(H5Tset_size(str.get(), CheckpointStatsRow::kSkipReasonBytes));
  EPLB_H5_CHECK(H5Tset_strpad(str.get(), H5T_STR_NULLTERM));
  for (const auto& m : stats_members())
    EPLB_H5_CHECK(H5Tinsert(t.get(), m.name, m.offset, m.type ? m.type : str.get()));
  return t;
}

/// The file type of rebalance_stats, before H5Dread converts it: HDF5 1.10 trusts the member
/// offsets and sizes of the file and reads or writes outside its buffers when they lie. Every
/// member must lie inside the compound, no two may overlap, and each member eplb reads must be
/// of its class (integer, float, fixed-length string) so that the conversion can be set up.
void check_stats_type(const Reader& rd, hid_t ft) {
  const std::string where = std::string("dataset '") + kStats + "' member '";
  const std::size_t size = H5Tget_size(ft);
  const int n = EPLB_H5_CHECK(H5Tget_nmembers(ft));
  struct Extent {
    std::size_t begin, end;
    std::string name;
  };
  std::vector<Extent> extents;
  const auto known = stats_members();
  for (int i = 0; i < n; ++i) {
    const auto index = static_cast<unsigned>(i);
    char* raw = H5Tget_member_name(ft, index);
    if (!raw) h5::fail("H5Tget_member_name(ft, index)", __FILE__, __LINE__);
    const std::string name = raw;
    H5free_memory(raw);
    const auto mt = H5Object::datatype(EPLB_H5_CHECK(H5Tget_member_type(ft, index)));
    const std::size_t offset = H5Tget_member_offset(ft, index);
    const std::size_t msize = H5Tget_size(mt.get());
    if (msize == 0 || offset > size || msize > size - offset)
      rd.bad(where + name + "' (offset " + std::to_string(offset) + ", " + std::to_string(msize) +
             " bytes) lies outside the compound of " + std::to_string(size) + " bytes");
    extents.push_back({offset, offset + msize, name});
    const auto m = std::find_if(known.begin(), known.end(),
                                [&](const Member& k) { return name == k.name; });
    if (m == known.end()) continue;  // a member this reader ignores
    const H5T_class_t want = m->type ? H5Tget_class(m->type) : H5T_STRING;
    const H5T_class_t have = H5Tget_class(mt.get());
    bool ok = have == want;
    if (ok && want == H5T_STRING) ok = EPLB_H5_CHECK(H5Tis_variable_str(mt.get())) == 0;
    if (ok && want == H5T_INTEGER) ok = msize <= 8;
    if (ok && want == H5T_FLOAT) ok = msize == 4 || msize == 8;
    if (!ok)
      rd.bad(where + name + "' has type " +
             (have == H5T_STRING && H5Tis_variable_str(mt.get()) > 0 ? "variable-length string"
                                                                    : type_text(mt.get())) +
             ", expected " +
             (want == H5T_INTEGER ? "an integer of at most 64 bits"
              : want == H5T_FLOAT ? "float32 or float64"
                                  : "a fixed-length string"));
  }
  std::sort(extents.begin(), extents.end(),
            [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
  for (std::size_t i = 1; i < extents.size(); ++i)
    if (extents[i].begin < extents[i - 1].end)
      rd.bad(where + extents[i - 1].name + "' and member '" + extents[i].name +
             "' overlap (offsets " + std::to_string(extents[i - 1].begin) + " and " +
             std::to_string(extents[i].begin) + ")");
}

StatsRecord to_record(const CheckpointStatsRow& r) {
  StatsRecord s{};
  s.epoch = r.epoch;
  s.pass = r.pass;
  s.skipped = r.skipped;
  s.balancedness_before = r.balancedness_before;
  s.balancedness_after = r.balancedness_after;
  s.imbalance_before = r.imbalance_before;
  s.imbalance_after = r.imbalance_after;
  s.slots_changed = r.slots_changed;
  s.remote_units = r.remote_units;
  s.local_units = r.local_units;
  s.fanout_copies = r.fanout_copies;
  s.same_node_remote = r.same_node_remote;
  s.max_rank_sends = r.max_rank_sends;
  s.max_rank_recvs = r.max_rank_recvs;
  s.max_rounds = r.max_rounds;
  s.migration_rounds = r.migration_rounds;
  s.total_remote_bytes = r.total_remote_bytes;
  s.total_local_bytes = r.total_local_bytes;
  s.t_collect_ms = r.t_collect_ms;
  s.t_policy_ms = r.t_policy_ms;
  s.t_broadcast_ms = r.t_broadcast_ms;
  s.t_plan_ms = r.t_plan_ms;
  s.t_migrate_ms = r.t_migrate_ms;
  s.t_total_ms = r.t_total_ms;
  const std::size_t n = std::min<std::size_t>(r.skip_reason.size(), sizeof s.skip_reason - 1);
  std::memcpy(s.skip_reason, r.skip_reason.data(), n);
  return s;
}

CheckpointStatsRow from_record(const StatsRecord& s) {
  CheckpointStatsRow r;
  r.epoch = s.epoch;
  r.pass = s.pass;
  r.skipped = s.skipped;
  r.balancedness_before = s.balancedness_before;
  r.balancedness_after = s.balancedness_after;
  r.imbalance_before = s.imbalance_before;
  r.imbalance_after = s.imbalance_after;
  r.slots_changed = s.slots_changed;
  r.remote_units = s.remote_units;
  r.local_units = s.local_units;
  r.fanout_copies = s.fanout_copies;
  r.same_node_remote = s.same_node_remote;
  r.max_rank_sends = s.max_rank_sends;
  r.max_rank_recvs = s.max_rank_recvs;
  r.max_rounds = s.max_rounds;
  r.migration_rounds = s.migration_rounds;
  r.total_remote_bytes = s.total_remote_bytes;
  r.total_local_bytes = s.total_local_bytes;
  r.t_collect_ms = s.t_collect_ms;
  r.t_policy_ms = s.t_policy_ms;
  r.t_broadcast_ms = s.t_broadcast_ms;
  r.t_plan_ms = s.t_plan_ms;
  r.t_migrate_ms = s.t_migrate_ms;
  r.t_total_ms = s.t_total_ms;
  r.skip_reason.assign(s.skip_reason, strnlen(s.skip_reason, sizeof s.skip_reason));
  return r;
}

/// Writes `bytes` to a new file `path` (O_EXCL) and fsyncs it; throws eplb::Error naming the
/// system's reason (a full disk: ENOSPC) and leaves removing the file to the caller.
void write_bytes(const std::string& path, const std::vector<unsigned char>& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) throw Error("open('" + path + "') for writing failed: " + std::strerror(errno));
  std::size_t done = 0;
  int err = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : EIO;
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  const char* step = "write";
  if (err == 0 && ::fsync(fd) != 0) err = errno, step = "fsync";
  if (::close(fd) != 0 && err == 0) err = errno, step = "close";
  if (err != 0)
    throw Error(std::string(step) + "('" + path + "') failed after " + std::to_string(done) + " of " +
                std::to_string(bytes.size()) + " bytes: " + std::strerror(err));
}

/// Builds the file in memory (H5File::create_in_memory), then writes it to `path`.
void write_file(const std::string& path, const Checkpoint& c, CheckpointFileFormat format) {
  auto file = H5File::create_in_memory(path, format == CheckpointFileFormat::checksummed);
  {
    const hid_t root = file.get();
    const auto& t = c.config.topology;
    put_i32(root, "format_version", kCheckpointFormatVersion);
    put_str(root, "eplb_version", c.eplb_version.empty() ? EPLB_VERSION : c.eplb_version);
    put_str(root, "created", c.created.empty() ? now_utc() : c.created);
    put_str(root, "writer", c.writer);
    put_i32(root, "num_layers", t.num_layers);
    put_i32(root, "num_logical", t.num_logical);
    put_i32(root, "num_slots", t.num_slots);
    put_i32(root, "num_ranks", t.num_ranks);
    put_i32(root, "num_nodes", t.num_nodes);
    put_i32(root, "num_groups", t.num_groups);
    put_str(root, "policy", c.config.policy);
    put_i32(root, "window_passes", c.config.window_passes);
    put_i32(root, "rebalance_interval", c.config.rebalance_interval);
    put_i32(root, "first_rebalance", c.config.first_rebalance);
    put_f64(root, "min_gain", c.config.min_gain);
    put_u64(root, "staging_bytes", c.config.staging_bytes);
    put_u64(root, "weight_layout_hash", c.config.weight_layout_hash);
    put_u64(root, "config_hash", config_hash(c.config));
    put_i64(root, "epoch", c.epoch);
    put_i64(root, "pass", c.pass);

    const auto L = static_cast<hsize_t>(t.num_layers), E = static_cast<hsize_t>(t.num_logical),
               R = static_cast<hsize_t>(t.num_slots),
               W = static_cast<hsize_t>(c.config.window_passes);
    put_dataset(root, kPhy2log, H5T_STD_I32LE, H5T_NATIVE_INT32, {L, R}, {L, R},
                c.phy2log.data());
    // One chunk per pass of the ring: a corrupt chunk names one pass, and reads stay small.
    put_dataset(root, kWindow, H5T_STD_I64LE, H5T_NATIVE_INT64, {W, L, E}, {1, L, E},
                c.window.data());
    auto win = H5Object::dataset(EPLB_H5_CHECK(H5Dopen2(root, kWindow, H5P_DEFAULT)));
    put_i32(win.get(), "cursor", c.window_cursor);
    win.close();

    std::vector<StatsRecord> rows;
    rows.reserve(c.stats.size());
    for (const auto& r : c.stats) rows.push_back(to_record(r));
    const auto mem = stats_mem_type();
    const auto packed = H5Object::datatype(EPLB_H5_CHECK(H5Tcopy(mem.get())));
    EPLB_H5_CHECK(H5Tpack(packed.get()));
    put_dataset(root, kStats, packed.get(), mem.get(), {static_cast<hsize_t>(rows.size())}, {256},
                rows.data());
  }
  const std::vector<unsigned char> bytes = file.image();
  file.close();
  write_bytes(path, bytes);
  // The image was taken from memory and its superblock patched (H5File::image): check that
  // HDF5 opens the file before it replaces a good one. Read-only: a failure here writes nothing.
  H5File::open(path).close();
}

void fsync_directory(const std::string& path) {
  const int fd = ::open(path.c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("open('" + path + "') for fsync failed: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw Error("fsync('" + path + "') failed: " + std::strerror(err));
}

}  // namespace

std::uint64_t config_hash(const CheckpointConfig& c) {
  std::uint64_t h = 14695981039346656037ull;
  const auto& t = c.topology;
  for (int v : {t.num_layers, t.num_logical, t.num_slots, t.num_ranks, t.num_nodes, t.num_groups})
    h = fnv_value<std::int64_t>(h, v);
  h = fnv_value<std::uint64_t>(h, c.policy.size());
  h = fnv(h, c.policy.data(), c.policy.size());
  h = fnv_value<std::int64_t>(h, c.window_passes);
  h = fnv_value<std::int64_t>(h, c.rebalance_interval);
  h = fnv_value<std::int64_t>(h, c.first_rebalance);
  h = fnv_value<double>(h, c.min_gain);
  h = fnv_value<std::uint64_t>(h, c.staging_bytes);
  h = fnv_value<std::uint64_t>(h, c.weight_layout_hash);
  return h;
}

void Checkpoint::validate() const {
  auto bad = [](const std::string& w) { throw CheckpointError("checkpoint: " + w); };
  try {
    config.topology.validate();
  } catch (const std::invalid_argument& e) {
    bad(std::string("topology: ") + e.what());
  }
  const auto& t = config.topology;
  if (config.policy.empty()) bad("policy name is empty");
  if (config.window_passes < 0) bad("window_passes < 0");
  const auto L = static_cast<std::size_t>(t.num_layers), E = static_cast<std::size_t>(t.num_logical),
             R = static_cast<std::size_t>(t.num_slots),
             W = static_cast<std::size_t>(config.window_passes);
  if (phy2log.size() != L * R)
    bad("phy2log has " + std::to_string(phy2log.size()) + " entries, expected L*R = " +
        std::to_string(L * R));
  if (window.size() != W * L * E)
    bad("window has " + std::to_string(window.size()) + " counts, expected W*L*E = " +
        std::to_string(W * L * E));
  if (W == 0 && window_cursor != 0)
    bad("window cursor " + std::to_string(window_cursor) + " in a file without a window (W = 0; must be 0)");
  if (W > 0 && (window_cursor < 0 || window_cursor >= config.window_passes))
    bad("window cursor " + std::to_string(window_cursor) + " outside [0, " + std::to_string(W) + ")");
  if (const auto e = algo::check_count_ring(window, W, L, E)) bad("window: " + *e);
  if (epoch < 0 || pass < 0 || epoch > algo::kMaxCount || pass > algo::kMaxCount)
    bad("epoch " + std::to_string(epoch) + " or pass " + std::to_string(pass) + " outside [0, 2^62]");
  if (writer != kWriterEngine && writer != kWriterPlan)
    bad("writer '" + writer + "' is unknown (expected '" + kWriterEngine + "' or '" + kWriterPlan + "')");
  try {
    algo::Placement p(t.num_layers, t.num_logical, t.num_slots,
                      std::vector<int>(phy2log.begin(), phy2log.end()));
  } catch (const std::invalid_argument& e) {
    bad(std::string("phy2log: ") + e.what());
  }
}

void write_checkpoint(const std::string& path, const Checkpoint& c, CheckpointFileFormat format) {
  c.validate();
  if (path.empty()) throw CheckpointError("checkpoint: empty path");
  // An existing file is replaced as itself: through a symbolic link, its target is (the link
  // stays), and the new file gets its permissions. Anything else that exists there (a device,
  // a FIFO, a directory) is left alone: rename() would put the file in its place.
  namespace fs = std::filesystem;
  if (algo::is_stream_path(path))  // /dev/stdout: the file behind it would be replaced
    throw Error("checkpoint: '" + path + "' is a stream (/dev/stdout, /dev/fd/N, /proc/*/fd/N); write checkpoints "
                "to a file");
  std::error_code ec;
  const auto st = fs::status(path, ec);  // of the link's target, for a link
  const bool exists = fs::exists(st);
  if (exists && !fs::is_regular_file(st))
    throw Error("checkpoint: '" + path + "' exists and is not a regular file (a directory, device or "
                "FIFO); it is not replaced");
  fs::path target = path;
  if (exists && fs::is_symlink(path, ec)) {
    target = fs::canonical(path, ec);
    if (ec) throw Error("checkpoint: resolving the link '" + path + "' failed: " + ec.message());
  }
  // Same directory as the target so that rename() is atomic; the pid keeps concurrent writers
  // (other jobs in the same directory) apart, and a file left by a crashed earlier process
  // with the same pid is stale by construction.
  const std::string tmp = target.string() + ".tmp." + std::to_string(::getpid());
  ::unlink(tmp.c_str());
  try {
    write_file(tmp, c, format);  // fsync'ed
    if (exists && ::chmod(tmp.c_str(), static_cast<mode_t>(st.permissions())) != 0)
      throw Error("chmod('" + tmp + "') to the replaced file's mode failed: " + std::strerror(errno));
    if (std::rename(tmp.c_str(), target.c_str()) != 0)
      throw Error("rename('" + tmp + "', '" + target.string() + "') failed: " + std::strerror(errno));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // The new file is in place: a failure now must not read as "nothing written".
  const auto dir = target.parent_path();
  try {
    fsync_directory(dir.empty() ? "." : dir.string());
  } catch (const Error& e) {
    throw Error("checkpoint '" + path + "' was written, but syncing its directory failed (the new "
                "file may not survive a power loss): " + e.what());
  }
}

Checkpoint read_checkpoint(const std::string& path) {
  Reader rd(path);
  {
    // Opened here first so that the system's reason is reported: HDF5 calls an unreadable file
    // "not HDF5", and std::filesystem a symlink loop "missing". O_NONBLOCK: a FIFO must not
    // block the open.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
      const int err = errno;
      if (err == ENOENT) rd.bad("no such file");
      rd.bad(std::string("cannot open: ") + std::strerror(err));
    }
    struct stat st {};
    const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    ::close(fd);
    if (!regular) rd.bad("not a regular file");
  }
  h5::quiet_errors();
  const htri_t is_h5 = H5Fis_hdf5(path.c_str());
  if (is_h5 <= 0) {
    h5::take_error_stack();
    rd.bad("not an HDF5 file (no HDF5 signature: wrong file or cut short before its header)");
  }
  Checkpoint c;
  try {
    auto file = [&] {
      try {
        return H5File::open(path);
      } catch (const H5Error& e) {
        rd.bad(std::string("cannot open (truncated or damaged file?): ") + e.what());
      }
    }();
    const hid_t root = file.get();
    c.format_version = rd.number<std::int32_t>(root, "format_version", " (not an eplb checkpoint?)");
    if (c.format_version > kCheckpointFormatVersion || c.format_version < 1)
      rd.bad("format version " + std::to_string(c.format_version) +
             " is not supported (this eplb " EPLB_VERSION " reads versions 1 to " +
             std::to_string(kCheckpointFormatVersion) + ")");
    c.eplb_version = rd.string(root, "eplb_version");
    c.created = rd.string(root, "created");
    c.writer = rd.string(root, "writer");  // checked with the rest in validate()
    auto& t = c.config.topology;
    t.num_layers = rd.number<std::int32_t>(root, "num_layers");
    t.num_logical = rd.number<std::int32_t>(root, "num_logical");
    t.num_slots = rd.number<std::int32_t>(root, "num_slots");
    t.num_ranks = rd.number<std::int32_t>(root, "num_ranks");
    t.num_nodes = rd.number<std::int32_t>(root, "num_nodes");
    t.num_groups = rd.number<std::int32_t>(root, "num_groups");
    c.config.policy = rd.string(root, "policy");
    c.config.window_passes = rd.number<std::int32_t>(root, "window_passes");
    c.config.rebalance_interval = rd.number<std::int32_t>(root, "rebalance_interval");
    c.config.first_rebalance = rd.number<std::int32_t>(root, "first_rebalance");
    c.config.min_gain = rd.number<double>(root, "min_gain");
    c.config.staging_bytes = rd.number<std::uint64_t>(root, "staging_bytes");
    c.config.weight_layout_hash = rd.number<std::uint64_t>(root, "weight_layout_hash");
    const auto stored_hash = rd.number<std::uint64_t>(root, "config_hash");
    if (stored_hash != config_hash(c.config))
      rd.bad("config_hash does not match the stored topology and settings (attributes damaged "
             "or edited)");
    c.epoch = rd.number<std::int64_t>(root, "epoch");
    c.pass = rd.number<std::int64_t>(root, "pass");
    try {
      t.validate();
    } catch (const std::invalid_argument& e) {
      rd.bad(std::string("stored topology is invalid: ") + e.what());
    }
    if (c.config.window_passes < 0) rd.bad("window_passes < 0");

    const auto L = static_cast<hsize_t>(t.num_layers), E = static_cast<hsize_t>(t.num_logical),
               R = static_cast<hsize_t>(t.num_slots),
               W = static_cast<hsize_t>(c.config.window_passes);
    {
      const auto d = rd.dataset(root, kPhy2log, H5T_INTEGER, 4, true, {L, R}, "L x R");
      c.phy2log.resize(rd.elements(d, kPhy2log, {L, R}, 4));
      rd.read(d, kPhy2log, H5T_NATIVE_INT32, c.phy2log.data());
    }
    {
      const auto d = rd.dataset(root, kWindow, H5T_INTEGER, 8, true, {W, L, E}, "W x L x E");
      c.window.resize(rd.elements(d, kWindow, {W, L, E}, 8));
      if (!c.window.empty()) rd.read(d, kWindow, H5T_NATIVE_INT64, c.window.data());
      c.window_cursor = rd.number<std::int32_t>(d.get(), "cursor", " on dataset 'window'");
    }
    {
      const auto d = rd.open_dataset(root, kStats);
      const auto space = H5Object::dataspace(EPLB_H5_CHECK(H5Dget_space(d.get())));
      if (EPLB_H5_CHECK(H5Sget_simple_extent_ndims(space.get())) != 1)
        rd.bad(std::string("dataset '") + kStats + "' is not one-dimensional");
      hsize_t n = 0;
      EPLB_H5_CHECK(H5Sget_simple_extent_dims(space.get(), &n, nullptr));
      const auto checked = rd.dataset(root, kStats, H5T_COMPOUND, 0, true, {n}, "rows");
      const auto ft = H5Object::datatype(EPLB_H5_CHECK(H5Dget_type(d.get())));
      for (const auto& m : stats_members())
        if (H5Tget_member_index(ft.get(), m.name) < 0) {
          h5::take_error_stack();
          rd.bad(std::string("dataset '") + kStats + "' lacks field '" + m.name + "'");
        }
      check_stats_type(rd, ft.get());
      std::vector<StatsRecord> rows(rd.elements(checked, kStats, {n}, H5Tget_size(ft.get())));
      const auto mem = stats_mem_type();
      if (n > 0) rd.read(checked, kStats, mem.get(), rows.data());
      c.stats.reserve(n);
      for (const auto& r : rows) c.stats.push_back(from_record(r));
    }
    file.close();
  } catch (const H5Error& e) {
    rd.bad(e.what());
  } catch (const std::bad_alloc&) {
    rd.bad("not enough memory for the datasets its attributes describe");
  }
  try {
    c.validate();
  } catch (const CheckpointError& e) {
    rd.bad(std::string(e.what()).substr(std::strlen("checkpoint: ")));
  } catch (const std::bad_alloc&) {  // validate() copies phy2log and sums the window
    rd.bad("not enough memory to check the datasets its attributes describe");
  }
  return c;
}

std::string describe_mismatch(const CheckpointConfig& f, const CheckpointConfig& r,
                              bool compare_settings) {
  std::vector<std::string> out;
  auto cmp = [&](const char* name, auto a, auto b) {
    if (a == b) return;
    std::ostringstream s;
    s << name << " (file " << a << ", running " << b << ")";
    out.push_back(s.str());
  };
  const auto &ft = f.topology, &rt = r.topology;
  cmp("num_layers", ft.num_layers, rt.num_layers);
  cmp("num_logical", ft.num_logical, rt.num_logical);
  cmp("num_slots", ft.num_slots, rt.num_slots);
  cmp("num_ranks", ft.num_ranks, rt.num_ranks);
  cmp("num_nodes", ft.num_nodes, rt.num_nodes);
  cmp("num_groups", ft.num_groups, rt.num_groups);
  if (f.window_passes != 0) cmp("window_passes", f.window_passes, r.window_passes);
  if (compare_settings) {
    cmp("policy", "'" + f.policy + "'", "'" + r.policy + "'");
    cmp("rebalance_interval", f.rebalance_interval, r.rebalance_interval);
    cmp("first_rebalance", f.first_rebalance, r.first_rebalance);
    cmp("min_gain", f.min_gain, r.min_gain);
    cmp("staging_bytes", f.staging_bytes, r.staging_bytes);
    cmp("weight_layout_hash", f.weight_layout_hash, r.weight_layout_hash);
  }
  std::string s;
  for (const auto& o : out) s += (s.empty() ? "" : ", ") + o;
  return s;
}

}  // namespace eplb::runtime
