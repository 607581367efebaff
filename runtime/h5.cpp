#include "eplb/runtime/h5.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <exception>

namespace eplb::runtime::h5 {
namespace {

herr_t collect(unsigned n, const H5E_error2_t* e, void* out) {
  auto& s = *static_cast<std::string*>(out);
  if (!s.empty()) s += "; ";
  (void)n;
  s += e->func_name ? e->func_name : "?";
  s += "(): ";
  const std::size_t from = s.size();
  s += e->desc ? e->desc : "(no description)";
  // Some descriptions (the sec2 driver's write failure) hold line breaks: keep one line.
  std::replace(s.begin() + static_cast<std::ptrdiff_t>(from), s.end(), '\n', ' ');
  return 0;
}

H5Object file_access_plist() {
  auto fapl = H5Object::plist(EPLB_H5_CHECK(H5Pcreate(H5P_FILE_ACCESS)));
  EPLB_H5_CHECK(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG));
  // Locking needs flock(), which some network and container filesystems refuse; eplb's
  // protocol (only rank 0 touches the file, atomic rename) does not rely on it.
  EPLB_H5_CHECK(H5Pset_file_locking(fapl.get(), false, true));
  return fapl;
}

}  // namespace

void quiet_errors() noexcept { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

std::string take_error_stack() {
  std::string s;
  // Outermost first reads like a story ("H5Dread(): can't read data; ...; fletcher32
  // checksum error"); the innermost (last) message is usually the real cause.
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect, &s);
  H5Eclear2(H5E_DEFAULT);
  return s.empty() ? "no HDF5 error message" : s;
}

void fail(const char* call, const char* file, int line) {
  throw H5Error(std::string(call) + " failed: " + take_error_stack() + " (" + file + ":" +
                std::to_string(line) + ")");
}

void H5Object::close() {
  if (id_ < 0) return;
  const hid_t id = std::exchange(id_, H5I_INVALID_HID);
  if (closer_(id) < 0) fail("H5 close", __FILE__, __LINE__);
}

void H5Object::reset() noexcept {
  if (id_ < 0) return;
  if (closer_(std::exchange(id_, H5I_INVALID_HID)) >= 0) return;
  // While an exception propagates it carries the real error, and a cause such as a full disk
  // fails every close after it: a line per object would bury that error (kilobytes of them).
  if (std::uncaught_exceptions() > 0) {
    H5Eclear2(H5E_DEFAULT);
    return;
  }
  // Destructors must not throw; comm's log_error needs MPI, which this target avoids.
  std::fprintf(stderr, "eplb: closing an HDF5 object failed: %s\n", take_error_stack().c_str());
}

H5File H5File::create_exclusive(const std::string& path, bool checksummed) {
  quiet_errors();
  const auto fapl = file_access_plist();
  if (checksummed)
    EPLB_H5_CHECK(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110));
  return H5File(H5Object(
      EPLB_H5_CHECK(H5Fcreate(path.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl.get())), H5Fclose));
}

H5File H5File::open(const std::string& path, bool writable) {
  quiet_errors();
  const auto fapl = file_access_plist();
  return H5File(H5Object(EPLB_H5_CHECK(H5Fopen(path.c_str(),
                                               writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY,
                                               fapl.get())),
                         H5Fclose));
}

void H5File::close() {
  if (!file_) return;
  EPLB_H5_CHECK(H5Fflush(file_.get(), H5F_SCOPE_GLOBAL));
  file_.close();
}

}  // namespace eplb::runtime::h5
