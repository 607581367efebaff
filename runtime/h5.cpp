#include "eplb/runtime/h5.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
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

H5File H5File::create_in_memory(const std::string& name, bool checksummed) {
  quiet_errors();
  const auto fapl = file_access_plist();
  EPLB_H5_CHECK(H5Pset_fapl_core(fapl.get(), std::size_t{1} << 20, /*backing_store=*/false));
  if (checksummed)
    EPLB_H5_CHECK(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110));
  return H5File(H5Object(
      EPLB_H5_CHECK(H5Fcreate(name.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get())), H5Fclose));
}

H5File H5File::open(const std::string& path, bool writable) {
  quiet_errors();
  const auto fapl = file_access_plist();
  return H5File(H5Object(EPLB_H5_CHECK(H5Fopen(path.c_str(),
                                               writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY,
                                               fapl.get())),
                         H5Fclose));
}

namespace {

/// Bob Jenkins' lookup3 hashlittle() (public domain), the checksum of HDF5's metadata blocks.
std::uint32_t lookup3(const unsigned char* k, std::size_t length) {
  auto rot = [](std::uint32_t x, int r) { return (x << r) | (x >> (32 - r)); };
  std::uint32_t a, b, c;
  a = b = c = 0xdeadbeefu + static_cast<std::uint32_t>(length);
  auto word = [&](std::size_t i) {
    return std::uint32_t{k[i]} | std::uint32_t{k[i + 1]} << 8 | std::uint32_t{k[i + 2]} << 16 |
           std::uint32_t{k[i + 3]} << 24;
  };
  std::size_t i = 0;
  for (; length > 12; length -= 12, i += 12) {
    a += word(i), b += word(i + 4), c += word(i + 8);
    a -= c, a ^= rot(c, 4), c += b;
    b -= a, b ^= rot(a, 6), a += c;
    c -= b, c ^= rot(b, 8), b += a;
    a -= c, a ^= rot(c, 16), c += b;
    b -= a, b ^= rot(a, 19), a += c;
    c -= b, c ^= rot(b, 4), b += a;
  }
  if (length == 0) return c;
  for (std::size_t j = 0; j < length; ++j) {
    const std::uint32_t v = std::uint32_t{k[i + j]} << (8 * (j % 4));
    (j < 4 ? a : j < 8 ? b : c) += v;
  }
  c ^= b, c -= rot(b, 14);
  a ^= c, a -= rot(c, 11);
  b ^= a, b -= rot(a, 25);
  c ^= b, c -= rot(b, 16);
  a ^= c, a -= rot(c, 4);
  b ^= a, b -= rot(a, 14);
  c ^= b, c -= rot(b, 24);
  return c;
}

/// HDF5 1.10's H5Fget_file_image clears the "open for writing" flag of a version 2 or 3
/// superblock in the image, but keeps the checksum that was computed with the flag set, so the
/// image does not open ("incorrect metadata checksum"). Clears the flags and recomputes the
/// checksum (a no-op where HDF5 got it right). Version 0 and 1 superblocks have no checksum.
void repair_superblock(std::vector<unsigned char>& img) {
  static const unsigned char kSignature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  if (img.size() < 12 || std::memcmp(img.data(), kSignature, 8) != 0)
    throw H5Error("file image does not start with an HDF5 superblock");
  if (img[8] < 2) return;
  // signature, version, size of offsets, size of lengths, flags, then four addresses
  const std::size_t n = 12 + 4 * std::size_t{img[9]};
  if (img.size() < n + 4) throw H5Error("file image shorter than its superblock");
  img[11] = 0;
  const std::uint32_t sum = lookup3(img.data(), n);
  for (std::size_t i = 0; i < 4; ++i) img[n + i] = static_cast<unsigned char>(sum >> (8 * i));
}

}  // namespace

std::vector<unsigned char> H5File::image() {
  EPLB_H5_CHECK(H5Fflush(file_.get(), H5F_SCOPE_GLOBAL));
  const ssize_t size = EPLB_H5_CHECK(H5Fget_file_image(file_.get(), nullptr, 0));
  std::vector<unsigned char> bytes(static_cast<std::size_t>(size));
  const ssize_t got = EPLB_H5_CHECK(H5Fget_file_image(file_.get(), bytes.data(), bytes.size()));
  if (got != size) throw H5Error("H5Fget_file_image returned " + std::to_string(got) + " of " +
                                 std::to_string(size) + " bytes");
  repair_superblock(bytes);
  return bytes;
}

void H5File::close() {
  if (!file_) return;
  EPLB_H5_CHECK(H5Fflush(file_.get(), H5F_SCOPE_GLOBAL));
  file_.close();
}

}  // namespace eplb::runtime::h5
