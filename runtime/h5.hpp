#pragma once
/// \file HDF5 (serial C API): move-only handles over hid_t and checked calls. HDF5's own
/// printing of error stacks is switched off; a failing call throws H5Error carrying the
/// call text, file:line and the messages of HDF5's error stack.
#include <hdf5.h>

#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "eplb/comm/error.hpp"

#define EPLB_H5_CHECK(call) ::eplb::runtime::h5::check((call), #call, __FILE__, __LINE__)

namespace eplb {

/// A failing HDF5 call: "<call> failed: <HDF5 error stack> (file:line)".
class H5Error : public Error {
 public:
  using Error::Error;
};

namespace runtime::h5 {

/// Turns off HDF5's automatic error printing for this thread's default stack (idempotent;
/// every H5File entry point calls it).
void quiet_errors() noexcept;
/// The messages of HDF5's current error stack, innermost last, joined by "; ", and clears it.
std::string take_error_stack();
[[noreturn]] void fail(const char* call, const char* file, int line);

/// Returns rc unless it is negative (HDF5's failure value for herr_t, hid_t, htri_t,
/// hssize_t), in which case it throws H5Error.
template <class T>
T check(T rc, const char* call, const char* file, int line) {
  static_assert(std::is_signed_v<T>, "HDF5 results are signed");
  if (rc < 0) fail(call, file, line);
  return rc;
}

/// One owned identifier (dataset, dataspace, datatype, attribute, property list, group)
/// with the close function of its kind. Move-only; the destructor closes and never throws:
/// a failing close is logged to stderr, except while an exception propagates (that exception
/// holds the error; the close failures that follow it are dropped).
class H5Object {
 public:
  using Closer = herr_t (*)(hid_t);
  H5Object() = default;
  H5Object(hid_t id, Closer closer) noexcept : id_(id), closer_(closer) {}
  ~H5Object() { reset(); }
  H5Object(H5Object&& o) noexcept
      : id_(std::exchange(o.id_, H5I_INVALID_HID)), closer_(o.closer_) {}
  H5Object& operator=(H5Object&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      closer_ = o.closer_;
    }
    return *this;
  }
  H5Object(const H5Object&) = delete;
  H5Object& operator=(const H5Object&) = delete;

  hid_t get() const { return id_; }
  explicit operator bool() const { return id_ >= 0; }
  /// Closes now, throwing H5Error if the close fails (where a failure must be seen: files).
  void close();

  static H5Object dataset(hid_t id) { return {id, H5Dclose}; }
  static H5Object dataspace(hid_t id) { return {id, H5Sclose}; }
  static H5Object datatype(hid_t id) { return {id, H5Tclose}; }
  static H5Object attribute(hid_t id) { return {id, H5Aclose}; }
  static H5Object plist(hid_t id) { return {id, H5Pclose}; }
  static H5Object group(hid_t id) { return {id, H5Gclose}; }
  /// A further reference to an open file (H5Iget_file_id).
  static H5Object file(hid_t id) { return {id, H5Fclose}; }

 private:
  void reset() noexcept;
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

/// An open HDF5 file (the sec2 driver when opened, the core driver in memory when made by
/// create_in_memory; strong close degree: closing closes every object in it; file locking
/// off so that files on NFS and in containers open). Move-only.
class H5File {
 public:
  /// Creates a file that lives in memory only (HDF5's core driver without backing store;
  /// `name` only names it in messages): nothing reaches the disk until the caller writes
  /// image() out. So a full disk fails the caller's write(), not HDF5's: HDF5 1.10.8 leaves a
  /// file whose flush or close failed half-closed, and crashes at process exit closing it.
  /// `checksummed`: in HDF5 1.10's format, where every metadata block carries a checksum
  /// (needs HDF5 >= 1.10 to read); otherwise in HDF5's earliest format, whose object headers
  /// and B-trees carry none.
  static H5File create_in_memory(const std::string& name, bool checksummed = true);
  /// Opens read-only or read-write.
  static H5File open(const std::string& path, bool writable = false);

  hid_t get() const { return file_.get(); }
  /// Flushes and closes; throws H5Error on failure (data may not be on disk).
  void close();
  /// The bytes of the whole file, as they would be on disk (flushes first).
  std::vector<unsigned char> image();

 private:
  explicit H5File(H5Object f) : file_(std::move(f)) {}
  H5Object file_;
};

}  // namespace runtime::h5
}  // namespace eplb
