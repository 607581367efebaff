// HDF5 checkpoint files: round trip, atomic replacement, and every kind of bad file.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "../checkpoint_files.hpp"

namespace {
namespace fs = std::filesystem;
using eplb::runtime::Checkpoint;
using eplb::runtime::CheckpointError;
using eplb::runtime::read_checkpoint;
using eplb::runtime::write_checkpoint;

class CheckpointFile : public testing::Test {
 protected:
  void SetUp() override {
    dir = fs::temp_directory_path() /
          ("eplb_ckpt_" + std::to_string(::getpid()) + "_" +
           testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
    path = (dir / "state.h5").string();
  }
  void TearDown() override { fs::remove_all(dir); }

  /// read_checkpoint must throw CheckpointError whose text holds every word.
  void expect_bad(std::initializer_list<const char*> words) {
    try {
      (void)read_checkpoint(path);
      ADD_FAILURE() << "read a bad checkpoint without error";
    } catch (const CheckpointError& e) {
      const std::string w = e.what();
      EXPECT_NE(w.find("checkpoint '" + path + "'"), std::string::npos) << w;
      for (const char* s : words) EXPECT_NE(w.find(s), std::string::npos) << w;
    }
  }
  std::size_t files_in_dir() const {
    return static_cast<std::size_t>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
  }

  fs::path dir;
  std::string path;
};

void expect_same(const Checkpoint& a, const Checkpoint& b) {
  EXPECT_EQ(a.config, b.config);
  EXPECT_EQ(a.epoch, b.epoch);
  EXPECT_EQ(a.pass, b.pass);
  EXPECT_EQ(a.window_cursor, b.window_cursor);
  EXPECT_EQ(a.window, b.window);
  EXPECT_EQ(a.phy2log, b.phy2log);
  ASSERT_EQ(a.stats.size(), b.stats.size());
  for (std::size_t i = 0; i < a.stats.size(); ++i) {
    EXPECT_EQ(a.stats[i].epoch, b.stats[i].epoch);
    EXPECT_EQ(a.stats[i].pass, b.stats[i].pass);
    EXPECT_EQ(a.stats[i].skipped, b.stats[i].skipped);
    EXPECT_EQ(a.stats[i].balancedness_after, b.stats[i].balancedness_after);
    EXPECT_EQ(a.stats[i].slots_changed, b.stats[i].slots_changed);
    EXPECT_EQ(a.stats[i].total_remote_bytes, b.stats[i].total_remote_bytes);
    EXPECT_EQ(a.stats[i].skip_reason, b.stats[i].skip_reason);
  }
}

TEST_F(CheckpointFile, RoundTrip) {
  const auto c = eplb::test::small_checkpoint();
  write_checkpoint(path, c);
  const auto r = read_checkpoint(path);
  expect_same(c, r);
  EXPECT_EQ(r.format_version, eplb::runtime::kCheckpointFormatVersion);
  EXPECT_EQ(r.writer, "engine");
  EXPECT_FALSE(r.eplb_version.empty());
  EXPECT_EQ(r.created.size(), 20u) << r.created;  // 2025-01-02T03:04:05Z
}

TEST_F(CheckpointFile, EmptyWindowAndHistory) {
  auto c = eplb::test::small_checkpoint();
  c.writer = eplb::runtime::kWriterPlan;
  c.config.window_passes = 0;
  c.window.clear();
  c.window_cursor = 0;
  c.stats.clear();
  write_checkpoint(path, c);
  expect_same(c, read_checkpoint(path));
}

TEST_F(CheckpointFile, LongSkipReasonIsTruncated) {
  auto c = eplb::test::small_checkpoint();
  c.stats[1].skip_reason = std::string(500, 'x');
  write_checkpoint(path, c);
  EXPECT_EQ(read_checkpoint(path).stats[1].skip_reason.size(),
            static_cast<std::size_t>(eplb::runtime::CheckpointStatsRow::kSkipReasonBytes - 1));
}

TEST_F(CheckpointFile, ReplacesAtomicallyAndLeavesNoTemporary) {
  auto c = eplb::test::small_checkpoint();
  write_checkpoint(path, c);
  c.epoch = 8;
  write_checkpoint(path, c);
  EXPECT_EQ(read_checkpoint(path).epoch, 8);
  EXPECT_EQ(files_in_dir(), 1u);
}

TEST_F(CheckpointFile, FailedWriteKeepsTheOldFile) {
  auto c = eplb::test::small_checkpoint();
  write_checkpoint(path, c);
  auto bad = c;
  bad.phy2log[0] = 99;  // rejected before any file is touched
  EXPECT_THROW(write_checkpoint(path, bad), CheckpointError);
  // A write that fails at the rename (the target is a directory) removes its temporary.
  const auto as_dir = (dir / "sub").string();
  fs::create_directories(dir / "sub" / "x");
  EXPECT_THROW(write_checkpoint(as_dir, c), eplb::Error);
  EXPECT_EQ(files_in_dir(), 2u);  // state.h5 and sub/
  EXPECT_EQ(read_checkpoint(path).epoch, c.epoch);
}

TEST_F(CheckpointFile, ReplacesALinksTargetAndKeepsItsMode) {
  auto c = eplb::test::small_checkpoint();
  fs::create_directories(dir / "real");
  const auto real = dir / "real" / "plan.h5";
  write_checkpoint(real.string(), c);
  fs::permissions(real, fs::perms::owner_read | fs::perms::owner_write);  // 0600
  const auto link = dir / "link.h5";
  fs::create_symlink(real, link);
  c.epoch = 8;
  write_checkpoint(link.string(), c);
  EXPECT_TRUE(fs::is_symlink(link)) << "the link was replaced by a file";
  EXPECT_EQ(read_checkpoint(real.string()).epoch, 8) << "the link's target was not updated";
  EXPECT_EQ(fs::status(real).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir / "real"), fs::directory_iterator()), 1);
}

TEST_F(CheckpointFile, DoesNotReplaceAFifoOrADirectory) {
  const auto c = eplb::test::small_checkpoint();
  const auto fifo = dir / "pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (const auto& p : {fifo, dir}) {
    try {
      write_checkpoint(p.string(), c);
      ADD_FAILURE() << "wrote over " << p;
    } catch (const eplb::Error& e) {
      EXPECT_NE(std::string(e.what()).find("is not a regular file"), std::string::npos) << e.what();
    }
  }
  EXPECT_TRUE(fs::is_fifo(fifo));
  EXPECT_EQ(files_in_dir(), 1u);  // the FIFO, no temporary
  // /dev/stdout redirected to a file is a regular file behind links: replacing it would lose
  // the file a shell redirected stdout to.
  const auto link = dir / "out_link";
  fs::create_symlink("/dev/stdout", link);
  for (const std::string& p : {std::string("/dev/stdout"), link.string()}) {
    try {
      write_checkpoint(p, c);
      ADD_FAILURE() << "wrote a checkpoint through " << p;
    } catch (const eplb::Error& e) {
      EXPECT_NE(std::string(e.what()).find("is a stream (/dev/stdout"), std::string::npos) << e.what();
    }
  }
}

TEST_F(CheckpointFile, MissingFile) { expect_bad({"no such file"}); }

TEST_F(CheckpointFile, NotHdf5) {
  std::ofstream(path) << "1,2,3\n";
  expect_bad({"not an HDF5 file"});
}

TEST_F(CheckpointFile, Truncated) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  eplb::test::truncate_to_half(path);
  expect_bad({"truncated"});
}

TEST_F(CheckpointFile, FlippedByteInPlacement) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  eplb::test::flip_byte(path, eplb::test::first_chunk_offset(path, "phy2log") + 5);
  expect_bad({"dataset 'phy2log' is corrupt", "checksum"});
}

TEST_F(CheckpointFile, FlippedByteInWindow) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  eplb::test::flip_byte(path, eplb::test::first_chunk_offset(path, "window") + 2);
  expect_bad({"dataset 'window' is corrupt", "checksum"});
}

TEST_F(CheckpointFile, NewerFormatVersion) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  eplb::test::set_int_attr(path, "format_version", 2);
  expect_bad({"format version 2 is not supported", "reads versions 1 to 1"});
}

TEST_F(CheckpointFile, MissingDataset) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  eplb::test::delete_link(path, "window");
  expect_bad({"missing dataset 'window'"});
}

TEST_F(CheckpointFile, MissingStatsTable) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  eplb::test::delete_link(path, "rebalance_stats");
  expect_bad({"missing dataset 'rebalance_stats'"});
}

TEST_F(CheckpointFile, WrongShape) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  eplb::test::replace_dataset(path, "phy2log", H5T_STD_I32LE, {2, 7});
  expect_bad({"dataset 'phy2log' has shape [2][7], expected [2][6] (L x R)"});
}

TEST_F(CheckpointFile, WrongDtype) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  eplb::test::replace_dataset(path, "window", H5T_IEEE_F64LE, {3, 2, 4});
  expect_bad({"dataset 'window' has dtype float64, expected int64"});
}

TEST_F(CheckpointFile, EditedAttributeFailsTheConfigHash) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  eplb::test::set_int_attr(path, "num_groups", 4);
  expect_bad({"config_hash does not match"});
}

TEST_F(CheckpointFile, DeclaredButUnwrittenWindowIsRejectedBeforeAllocating) {
  const auto c = eplb::test::small_checkpoint();
  write_checkpoint(path, c);
  {  // the window dataset recreated chunked, with its shape but without data
    auto f = eplb::test::edit(path);
    EPLB_H5_CHECK(H5Ldelete(f.get(), "window", H5P_DEFAULT));
    const std::vector<hsize_t> dims = {static_cast<hsize_t>(c.config.window_passes),
                                       static_cast<hsize_t>(c.config.topology.num_layers),
                                       static_cast<hsize_t>(c.config.topology.num_logical)};
    const auto space = eplb::test::H5Object::dataspace(
        EPLB_H5_CHECK(H5Screate_simple(3, dims.data(), nullptr)));
    const auto plist = eplb::test::H5Object::plist(EPLB_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
    const hsize_t chunk[3] = {1, dims[1], dims[2]};
    EPLB_H5_CHECK(H5Pset_chunk(plist.get(), 3, chunk));
    const auto d = eplb::test::H5Object::dataset(EPLB_H5_CHECK(H5Dcreate2(
        f.get(), "window", H5T_STD_I64LE, space.get(), H5P_DEFAULT, plist.get(), H5P_DEFAULT)));
  }
  expect_bad({"dataset 'window' holds 0 bytes", "(unwritten or truncated)"});
}

// ---- damaged layouts and types, hostile paths (a reviewer's fuzzing found each) ----------

std::string le32(std::uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

/// Offset of the only occurrence of `pattern` in the file (the test fails if there is not
/// exactly one).
std::size_t find_once(const std::string& path, const std::string& pattern) {
  std::ifstream in(path, std::ios::binary);
  const std::string d((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto at = d.find(pattern);
  EXPECT_NE(at, std::string::npos) << "pattern not in " << path;
  EXPECT_EQ(d.find(pattern, at + 1), std::string::npos) << "pattern twice in " << path;
  return at;
}

void overwrite(const std::string& path, std::size_t offset, const std::string& bytes) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.flush()) << path;
}

/// Offset of phy2log's chunk layout message (version 3, chunked, rank + 1 = 3, B-tree address,
/// chunk dims L=2 R=6, element size 4) in a file of small_checkpoint() written in HDF5's
/// earliest format, whose object headers carry no checksum, so that an edit goes unnoticed by
/// HDF5 (eplb writes checksummed files; older eplb, h5repack without -L and HDF5 1.8 tools
/// write this format, and the reader's own checks are for such files).
std::size_t phy2log_layout(const std::string& path) {
  const auto dims = find_once(path, le32(2) + le32(6) + le32(4));
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(dims - 11));
  char head[3] = {};
  in.read(head, 3);
  EXPECT_EQ(std::string(head, 3), std::string("\x03\x02\x03", 3)) << "not a layout message";
  return dims - 11;
}

constexpr auto kEarliest = eplb::runtime::CheckpointFileFormat::earliest;

TEST_F(CheckpointFile, ChunkLargerThanTheDatasetIsRejectedBeforeReading) {
  write_checkpoint(path, eplb::test::small_checkpoint(), kEarliest);
  overwrite(path, phy2log_layout(path) + 11 + 4, le32(65300));  // H5Dread crashed on this
  expect_bad({"dataset 'phy2log' has chunks [2][65300] that do not fit its shape [2][6]"});
}

TEST_F(CheckpointFile, ChunkOfAnotherRankIsRejectedBeforeReading) {
  write_checkpoint(path, eplb::test::small_checkpoint(), kEarliest);
  overwrite(path, phy2log_layout(path) + 2, "\x04");  // H5Dread allocated without bound
  expect_bad({"dataset 'phy2log' has chunks [2][6][4] that do not fit its shape [2][6]"});
}

TEST_F(CheckpointFile, CompoundMemberOutsideTheRowOrOverlappingIsRejected) {
  write_checkpoint(path, eplb::test::small_checkpoint(), kEarliest);
  // The compound's member entry: the name padded to 8 bytes, then its byte offset.
  const auto offset_at = find_once(path, std::string("skip_reason\0\0\0\0\0", 16)) + 16;
  overwrite(path, offset_at + 3, "\xff");  // H5Dread's conversion crashed on this
  expect_bad({"dataset 'rebalance_stats' member 'skip_reason' (offset ", "lies outside the compound of"});
  overwrite(path, offset_at, le32(8));  // inside the row, on top of 'pass' (HDF5 sees this one)
  expect_bad({"dataset 'rebalance_stats' cannot be opened", "overlaps"});
}

/// What reading a copy of `good_file` with byte i XOR 0xff did, for each i in [first, last).
/// The reads run in a child process, which records each outcome in shared memory; when HDF5
/// crashes (or a read hangs: SIGALRM) the first offset without an outcome is the culprit, and a
/// new child goes on after it.
struct FlipOutcomes {
  int same = 0;   ///< read back equal to the original (a byte HDF5 does not use)
  int error = 0;  ///< CheckpointError
  int crashes = 0, other_exceptions = 0, silent_changes = 0;
  std::string bad;  ///< "offset: what; " for each of the last three (the first ones)
  int bad_count() const { return crashes + other_exceptions + silent_changes; }
};

FlipOutcomes flip_each_byte(const std::string& good_file, const std::string& scratch,
                            std::size_t first, std::size_t last) {
  enum : unsigned char { kNone, kSame, kError, kOther, kChanged };
  const Checkpoint good = read_checkpoint(good_file);
  std::ifstream in(good_file, std::ios::binary);
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  last = std::min(last, data.size());
  FlipOutcomes out;
  if (first >= last) return out;
  const std::size_t n = last - first;
  void* mem = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    ADD_FAILURE() << "mmap failed";
    return out;
  }
  auto* result = static_cast<volatile unsigned char*>(mem);
  for (std::size_t i = 0; i < n; ++i) result[i] = kNone;
  auto note = [&](std::size_t i, const std::string& what) {
    if (out.bad.size() < 2000) out.bad += std::to_string(first + i) + ": " + what + "; ";
  };
  std::size_t next = 0;
  while (next < n) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      ADD_FAILURE() << "fork failed";
      break;
    }
    if (pid == 0) {
      for (std::size_t i = next; i < n; ++i) {
        std::string d = data;
        d[first + i] = static_cast<char>(d[first + i] ^ 0xff);
        {
          std::ofstream f(scratch, std::ios::binary | std::ios::trunc);
          f.write(d.data(), static_cast<std::streamsize>(d.size()));
        }
        ::alarm(30);
        unsigned char r = kOther;
        try {
          r = read_checkpoint(scratch) == good ? kSame : kChanged;
        } catch (const CheckpointError&) {
          r = kError;
        } catch (...) {
        }
        result[i] = r;
      }
      ::_exit(0);
    }
    int status = 0;
    if (::waitpid(pid, &status, 0) != pid) {
      ADD_FAILURE() << "waitpid failed";
      break;
    }
    while (next < n && result[next] != kNone) ++next;
    if (next < n) {  // the child died reading this one
      ++out.crashes;
      note(next, WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                     : "the reader exited");
      ++next;
    }
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (result[i] == kSame) ++out.same;
    if (result[i] == kError) ++out.error;
    if (result[i] == kOther) ++out.other_exceptions, note(i, "another exception");
    if (result[i] == kChanged) ++out.silent_changes, note(i, "read a different checkpoint without error");
  }
  ::munmap(mem, n);
  return out;
}

// The format eplb writes checksums all of its metadata and data: whichever byte of the file is
// damaged, the reader either throws CheckpointError or (for a byte HDF5 does not use) reads the
// same checkpoint; it never crashes or returns different values. (The earliest format fails
// this: 238 of its 14624 bytes read back as different values without an error; the next
// test shows one.)
TEST_F(CheckpointFile, EveryDamagedByteOfAChecksummedFileIsAnErrorOrUnused) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  const auto size = static_cast<std::size_t>(fs::file_size(path));
  const FlipOutcomes o = flip_each_byte(path, (dir / "flipped.h5").string(), 0, size);
  EXPECT_EQ(o.bad_count(), 0) << o.bad;
  EXPECT_EQ(static_cast<std::size_t>(o.same + o.error + o.bad_count()), size);
  EXPECT_GT(o.error, static_cast<int>(size / 2));  // most bytes are used
}

// Why: in HDF5's earliest format an attribute's value has no checksum, so a damaged 'pass'
// reads back as another number (config_hash covers the topology and settings, not the
// counters). Also the negative control of the test above: its check does see silent changes.
/// Offset of the 8 bytes of the attribute 'pass' in a file of small_checkpoint() with `pass`
/// set to a value whose bytes occur once in the file.
std::size_t write_with_distinct_pass(const std::string& path, eplb::runtime::CheckpointFileFormat f) {
  auto c = eplb::test::small_checkpoint();
  c.pass = 0xabcdef12345;
  write_checkpoint(path, c, f);
  std::string value(8, '\0');
  for (int i = 0; i < 8; ++i) value[static_cast<std::size_t>(i)] = static_cast<char>((c.pass >> (8 * i)) & 0xff);
  return find_once(path, value);
}

TEST_F(CheckpointFile, DamagedAttributeOfAChecksummedFileFailsItsChecksum) {
  overwrite(path, write_with_distinct_pass(path, eplb::runtime::CheckpointFileFormat::checksummed), "\x46");
  expect_bad({"attribute 'format_version' cannot be read (damaged header?)", "checksum"});
}

TEST_F(CheckpointFile, EarliestFormatReadsADamagedAttributeAsAnotherValue) {
  const std::size_t at = write_with_distinct_pass(path, kEarliest);
  const FlipOutcomes o = flip_each_byte(path, (dir / "flipped.h5").string(), at, at + 8);
  EXPECT_GT(o.silent_changes, 0) << o.bad;
}

TEST_F(CheckpointFile, CompoundMemberOfTheWrongTypeIsNamed) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  {  // rebalance_stats rewritten with 'epoch' as an 8-byte string
    auto f = eplb::test::edit(path);
    const auto old = eplb::test::H5Object::dataset(
        EPLB_H5_CHECK(H5Dopen2(f.get(), "rebalance_stats", H5P_DEFAULT)));
    const auto ft = eplb::test::H5Object::datatype(EPLB_H5_CHECK(H5Dget_type(old.get())));
    const auto str8 = eplb::test::H5Object::datatype(EPLB_H5_CHECK(H5Tcopy(H5T_C_S1)));
    EPLB_H5_CHECK(H5Tset_size(str8.get(), 8));
    const auto nt = eplb::test::H5Object::datatype(
        EPLB_H5_CHECK(H5Tcreate(H5T_COMPOUND, H5Tget_size(ft.get()))));
    for (unsigned i = 0; i < static_cast<unsigned>(H5Tget_nmembers(ft.get())); ++i) {
      char* name = H5Tget_member_name(ft.get(), i);
      const auto mt = eplb::test::H5Object::datatype(EPLB_H5_CHECK(H5Tget_member_type(ft.get(), i)));
      EPLB_H5_CHECK(H5Tinsert(nt.get(), name, H5Tget_member_offset(ft.get(), i),
                              std::strcmp(name, "epoch") == 0 ? str8.get() : mt.get()));
      H5free_memory(name);
    }
    EPLB_H5_CHECK(H5Ldelete(f.get(), "rebalance_stats", H5P_DEFAULT));
    const hsize_t rows = 2;
    const auto space = eplb::test::H5Object::dataspace(EPLB_H5_CHECK(H5Screate_simple(1, &rows, nullptr)));
    const auto d = eplb::test::H5Object::dataset(EPLB_H5_CHECK(H5Dcreate2(
        f.get(), "rebalance_stats", nt.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)));
    const std::vector<char> zeros(2 * H5Tget_size(nt.get()), 0);
    EPLB_H5_CHECK(H5Dwrite(d.get(), nt.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros.data()));
  }
  expect_bad({"dataset 'rebalance_stats' member 'epoch' has type string, expected an integer"});
}

/// Rewrites dataset `name` with the deflate filter alone (what `h5repack -f GZIP=6` does),
/// keeping its type, shape, chunks, data and a `cursor` attribute.
void deflate_dataset(const std::string& path, const char* name) {
  using eplb::test::H5Object;
  auto f = eplb::test::edit(path);
  const auto old = H5Object::dataset(EPLB_H5_CHECK(H5Dopen2(f.get(), name, H5P_DEFAULT)));
  const auto type = H5Object::datatype(EPLB_H5_CHECK(H5Dget_type(old.get())));
  const auto space = H5Object::dataspace(EPLB_H5_CHECK(H5Dget_space(old.get())));
  const auto old_dcpl = H5Object::plist(EPLB_H5_CHECK(H5Dget_create_plist(old.get())));
  hsize_t chunk[3] = {};
  const int rank = EPLB_H5_CHECK(H5Pget_chunk(old_dcpl.get(), 3, chunk));
  std::vector<char> data(static_cast<std::size_t>(H5Sget_simple_extent_npoints(space.get())) *
                         H5Tget_size(type.get()));
  EPLB_H5_CHECK(H5Dread(old.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()));
  std::int32_t cursor = 0;
  const bool has_cursor = EPLB_H5_CHECK(H5Aexists(old.get(), "cursor")) > 0;
  if (has_cursor) {
    const auto a = H5Object::attribute(EPLB_H5_CHECK(H5Aopen(old.get(), "cursor", H5P_DEFAULT)));
    EPLB_H5_CHECK(H5Aread(a.get(), H5T_NATIVE_INT32, &cursor));
  }
  EPLB_H5_CHECK(H5Ldelete(f.get(), name, H5P_DEFAULT));
  const auto dcpl = H5Object::plist(EPLB_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
  EPLB_H5_CHECK(H5Pset_chunk(dcpl.get(), rank, chunk));
  EPLB_H5_CHECK(H5Pset_deflate(dcpl.get(), 6));
  const auto d = H5Object::dataset(EPLB_H5_CHECK(
      H5Dcreate2(f.get(), name, type.get(), space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT)));
  EPLB_H5_CHECK(H5Dwrite(d.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()));
  if (has_cursor) {
    const auto one = H5Object::dataspace(EPLB_H5_CHECK(H5Screate(H5S_SCALAR)));
    const auto a = H5Object::attribute(EPLB_H5_CHECK(
        H5Acreate2(d.get(), "cursor", H5T_STD_I32LE, one.get(), H5P_DEFAULT, H5P_DEFAULT)));
    EPLB_H5_CHECK(H5Awrite(a.get(), H5T_NATIVE_INT32, &cursor));
  }
}

TEST_F(CheckpointFile, CompressedFileIsRead) {
  if (H5Zfilter_avail(H5Z_FILTER_DEFLATE) <= 0) GTEST_SKIP() << "this HDF5 has no deflate filter";
  const auto c = eplb::test::small_checkpoint();
  write_checkpoint(path, c);
  for (const char* name : {"phy2log", "window", "rebalance_stats"}) deflate_dataset(path, name);
  expect_same(c, read_checkpoint(path));
}

// ---- data that lives outside the file (a reviewer's crafted files: /dev/zero was read as the
// window, and a FIFO behind a link or an external file list hung the reader) --------------

/// Replaces dataset `name` of `path` by `make(file)` (which creates the new link or dataset).
template <class Make>
void replace_dataset(const std::string& path, const char* name, Make make) {
  auto f = eplb::test::edit(path);
  EPLB_H5_CHECK(H5Ldelete(f.get(), name, H5P_DEFAULT));
  make(f.get());
}

/// A FIFO nobody writes to: opening or reading it would block for ever (the test's timeout
/// would catch that), so the reader must reject what points there without opening it.
std::string make_fifo(const fs::path& dir) {
  const auto p = (dir / "never_written.fifo").string();
  EXPECT_EQ(::mkfifo(p.c_str(), 0600), 0) << std::strerror(errno);
  return p;
}

TEST_F(CheckpointFile, DatasetBehindAnExternalLinkIsNotFollowed) {
  const auto c = eplb::test::small_checkpoint();
  const std::string other = (dir / "other.h5").string();
  write_checkpoint(other, c);  // a valid target: the link alone is the problem
  write_checkpoint(path, c);
  replace_dataset(path, "window", [&](hid_t f) {
    EPLB_H5_CHECK(H5Lcreate_external(other.c_str(), "/window", f, "window", H5P_DEFAULT, H5P_DEFAULT));
  });
  expect_bad({"'window' is an external link, not a dataset stored in this file"});
  const std::string fifo = make_fifo(dir);
  replace_dataset(path, "window", [&](hid_t f) {
    EPLB_H5_CHECK(H5Lcreate_external(fifo.c_str(), "/window", f, "window", H5P_DEFAULT, H5P_DEFAULT));
  });
  expect_bad({"'window' is an external link"});
}

TEST_F(CheckpointFile, DatasetBehindASoftLinkIsNotFollowed) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  {
    auto f = eplb::test::edit(path);
    EPLB_H5_CHECK(H5Lmove(f.get(), "phy2log", f.get(), "phy2log_moved", H5P_DEFAULT, H5P_DEFAULT));
    EPLB_H5_CHECK(H5Lcreate_soft("/phy2log_moved", f.get(), "phy2log", H5P_DEFAULT, H5P_DEFAULT));
  }
  expect_bad({"'phy2log' is a soft link"});
}

TEST_F(CheckpointFile, DataInExternalFilesIsRejectedBeforeReading) {
  const auto c = eplb::test::small_checkpoint();
  write_checkpoint(path, c);
  const std::string fifo = make_fifo(dir);
  for (const std::string& source : {std::string("/dev/zero"), fifo}) {
    replace_dataset(path, "window", [&](hid_t f) {
      const hsize_t dims[3] = {3, 2, 4};
      const auto space = eplb::test::H5Object::dataspace(EPLB_H5_CHECK(H5Screate_simple(3, dims, nullptr)));
      const auto dcpl = eplb::test::H5Object::plist(EPLB_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
      EPLB_H5_CHECK(H5Pset_external(dcpl.get(), source.c_str(), 0, 3 * 2 * 4 * 8));
      const auto d = eplb::test::H5Object::dataset(EPLB_H5_CHECK(H5Dcreate2(
          f, "window", H5T_STD_I64LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT)));
      const auto one = eplb::test::H5Object::dataspace(EPLB_H5_CHECK(H5Screate(H5S_SCALAR)));
      const auto a = eplb::test::H5Object::attribute(EPLB_H5_CHECK(
          H5Acreate2(d.get(), "cursor", H5T_STD_I32LE, one.get(), H5P_DEFAULT, H5P_DEFAULT)));
      const std::int32_t cursor = 0;
      EPLB_H5_CHECK(H5Awrite(a.get(), H5T_NATIVE_INT32, &cursor));
    });
    SCOPED_TRACE(source);
    expect_bad({"dataset 'window' keeps its data in 1 external file(s), not in the checkpoint file"});
  }
}

TEST_F(CheckpointFile, VirtualDatasetIsRejectedBeforeItsSourcesAreOpened) {
  const auto c = eplb::test::small_checkpoint();
  write_checkpoint(path, c);
  const std::string fifo = make_fifo(dir);
  // An unlimited mapping: HDF5 opens the sources of such a mapping to compute the dataset's
  // extent (H5Dget_space), and this source is a FIFO nobody writes to.
  replace_dataset(path, "window", [&](hid_t f) {
    const hsize_t dims[3] = {3, 2, 4}, maxdims[3] = {H5S_UNLIMITED, 2, 4};
    const hsize_t start[3] = {0, 0, 0}, stride[3] = {1, 1, 1}, count[3] = {H5S_UNLIMITED, 1, 1},
                  block[3] = {1, 2, 4};
    const auto vspace = eplb::test::H5Object::dataspace(EPLB_H5_CHECK(H5Screate_simple(3, dims, maxdims)));
    EPLB_H5_CHECK(H5Sselect_hyperslab(vspace.get(), H5S_SELECT_SET, start, stride, count, block));
    const auto src = eplb::test::H5Object::dataspace(EPLB_H5_CHECK(H5Screate_simple(3, dims, maxdims)));
    EPLB_H5_CHECK(H5Sselect_hyperslab(src.get(), H5S_SELECT_SET, start, stride, count, block));
    const auto dcpl = eplb::test::H5Object::plist(EPLB_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
    EPLB_H5_CHECK(H5Pset_virtual(dcpl.get(), vspace.get(), fifo.c_str(), "/window", src.get()));
    const auto d = eplb::test::H5Object::dataset(EPLB_H5_CHECK(
        H5Dcreate2(f, "window", H5T_STD_I64LE, vspace.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT)));
  });
  expect_bad({"dataset 'window' is a virtual dataset (its data lives in other files)"});
}

/// A filter HDF5 does not have built in (a plugin's id), passing data through unchanged.
std::size_t passthrough(unsigned, std::size_t, const unsigned[], std::size_t nbytes, std::size_t*, void**) {
  return nbytes;
}

TEST_F(CheckpointFile, FilterThatIsNotBuiltIntoHdf5IsRejected) {
  constexpr H5Z_filter_t kPluginId = 32123;  // in the range for third-party filters
  const H5Z_class2_t cls = {H5Z_CLASS_T_VERS, kPluginId, 1, 1, "eplb test plugin", nullptr, nullptr, passthrough};
  ASSERT_GE(H5Zregister(&cls), 0);
  write_checkpoint(path, eplb::test::small_checkpoint());
  replace_dataset(path, "phy2log", [&](hid_t f) {
    const hsize_t dims[2] = {2, 6};
    const auto space = eplb::test::H5Object::dataspace(EPLB_H5_CHECK(H5Screate_simple(2, dims, nullptr)));
    const auto dcpl = eplb::test::H5Object::plist(EPLB_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
    EPLB_H5_CHECK(H5Pset_chunk(dcpl.get(), 2, dims));
    EPLB_H5_CHECK(H5Pset_filter(dcpl.get(), kPluginId, H5Z_FLAG_MANDATORY, 0, nullptr));
    const auto d = eplb::test::H5Object::dataset(EPLB_H5_CHECK(
        H5Dcreate2(f, "phy2log", H5T_STD_I32LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT)));
    const auto c = eplb::test::small_checkpoint();
    EPLB_H5_CHECK(H5Dwrite(d.get(), H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.phy2log.data()));
  });
  // Registered here, so HDF5 could read it: the reader refuses it by id alone.
  expect_bad({"dataset 'phy2log' uses filter 32123, which is not built into HDF5"});
  EXPECT_GE(H5Zunregister(kPluginId), 0);
}

TEST_F(CheckpointFile, UnopenablePathsNameTheSystemError) {
  const std::string file = path;
  write_checkpoint(file, eplb::test::small_checkpoint());
  path = (dir / "loop1.h5").string();  // loop1 -> loop2 -> loop1
  fs::create_symlink(dir / "loop2.h5", path);
  fs::create_symlink(path, dir / "loop2.h5");
  expect_bad({"cannot open: ", std::strerror(ELOOP)});
  path = file + "/inner.h5";  // the parent is a regular file
  expect_bad({"cannot open: ", std::strerror(ENOTDIR)});
  if (::geteuid() != 0) {  // root reads whatever the mode says
    path = file;
    fs::permissions(path, fs::perms::none);
    expect_bad({"cannot open: ", std::strerror(EACCES)});
  }
}

TEST_F(CheckpointFile, IntegerAttributeOutsideItsRangeIsNamed) {
  auto set_i64 = [&](const char* name, std::int64_t v) {
    auto f = eplb::test::edit(path);
    EPLB_H5_CHECK(H5Adelete(f.get(), name));
    const auto one = eplb::test::H5Object::dataspace(EPLB_H5_CHECK(H5Screate(H5S_SCALAR)));
    const auto a = eplb::test::H5Object::attribute(EPLB_H5_CHECK(
        H5Acreate2(f.get(), name, H5T_STD_I64LE, one.get(), H5P_DEFAULT, H5P_DEFAULT)));
    EPLB_H5_CHECK(H5Awrite(a.get(), H5T_NATIVE_INT64, &v));
  };
  write_checkpoint(path, eplb::test::small_checkpoint());
  set_i64("num_layers", (std::int64_t{1} << 32) + 4);  // was clamped to 2^31 - 1
  expect_bad({"attribute 'num_layers' = 4294967300 is outside the range of int32"});
  write_checkpoint(path, eplb::test::small_checkpoint());
  set_i64("staging_bytes", -1);  // was clamped to 0
  expect_bad({"attribute 'staging_bytes' = -1 is outside the range of uint64"});
}

TEST_F(CheckpointFile, WriteOnAFullDiskReportsOneError) {
  // In a child process (the file-size limit is per process). The file is built in memory and
  // written by eplb, so HDF5 never sees the failed write: the child shuts HDF5 down (H5close,
  // what happens at exit) without a crash. (When HDF5 wrote the file itself, a failed flush
  // left the file half-closed in HDF5 1.10.8, and H5close at exit crashed.)
  const std::string log = (dir / "stderr.txt").string();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (!std::freopen(log.c_str(), "w", stderr)) ::_exit(3);
    // RLIMIT_FSIZE makes every write past the limit fail (EFBIG), as a full disk does (ENOSPC).
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit small{};
    ::getrlimit(RLIMIT_FSIZE, &small);
    small.rlim_cur = 4096;
    if (::setrlimit(RLIMIT_FSIZE, &small) != 0) ::_exit(3);
    int rc = 1;
    try {
      write_checkpoint(path, eplb::test::small_checkpoint());
    } catch (const eplb::Error& e) {
      rc = std::strstr(e.what(), "File too large") ? 0 : 2;  // the cause, in the one error
      std::fprintf(stderr, "%s\n", e.what());
    }
    if (H5close() < 0) rc = 4;
    std::fflush(stderr);
    ::_exit(rc);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died";
  std::ifstream in(log);
  const std::string err((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "0: threw naming the cause, 1: did not throw, 2: other error, 4: H5close failed\n" << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err.substr(0, 2000);  // the error only
  EXPECT_FALSE(fs::exists(path));
  EXPECT_EQ(files_in_dir(), 1u);  // stderr.txt: the temporary is removed
}

TEST(CheckpointValidate, CountsAndCountersStayFarFromOverflow) {
  auto expect_invalid = [](const eplb::runtime::Checkpoint& c, const char* words) {
    try {
      c.validate();
      ADD_FAILURE() << "accepted: " << words;
    } catch (const CheckpointError& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  const auto good = eplb::test::small_checkpoint();
  ASSERT_NO_THROW(good.validate());
  ASSERT_GE(good.config.window_passes, 2);
  auto c = good;  // the same (layer 0, expert 1) in two passes: 2^61 + 2^61 + 1 > 2^62
  const std::size_t le = static_cast<std::size_t>(c.config.topology.num_layers) * c.config.topology.num_logical;
  c.window[1] = std::int64_t{1} << 61;
  c.window[le + 1] = (std::int64_t{1} << 61) + 1;
  expect_invalid(c, "counts of layer 0, expert 1 add up to more than 2^62");
  c = good;
  c.epoch = (std::int64_t{1} << 62) + 1;
  expect_invalid(c, "outside [0, 2^62]");
  c = good;
  c.writer = "someone";
  expect_invalid(c, "writer 'someone' is unknown");
}

TEST_F(CheckpointFile, UnknownWriterIsRejected) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  {
    auto f = eplb::test::edit(path);
    const auto a = eplb::test::H5Object::attribute(EPLB_H5_CHECK(H5Aopen(f.get(), "writer", H5P_DEFAULT)));
    const auto t = eplb::test::H5Object::datatype(EPLB_H5_CHECK(H5Aget_type(a.get())));
    const char flipped[] = "enginf";  // one byte of "engine" changed: not covered by config_hash
    EPLB_H5_CHECK(H5Awrite(a.get(), t.get(), flipped));
  }
  expect_bad({"writer 'enginf' is unknown (expected 'engine' or 'eplb-plan')"});
}

TEST_F(CheckpointFile, InvalidPlacementValues) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  {
    auto f = eplb::test::edit(path);
    const auto d = eplb::test::H5Object::dataset(H5Dopen2(f.get(), "phy2log", H5P_DEFAULT));
    std::vector<int> p = {0, 1, 2, 3, 0, 1, 3, 2, 1, 0, 3, 7};
    ASSERT_GE(H5Dwrite(d.get(), H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, p.data()), 0);
  }
  expect_bad({"phy2log[", "= 7 is outside [0, "});
}

// Values a well-formed file (valid checksums, right shapes) can still hold, caught by
// Checkpoint::validate; each message names the field.
TEST(CheckpointValidate, NamesTheInvalidField) {
  const auto good = eplb::test::small_checkpoint();  // L=2 E=4 R=6, W=3
  ASSERT_NO_THROW(good.validate());
  struct Bad {
    void (*edit)(Checkpoint&);
    const char* message;
  };
  for (const Bad& b : {
           Bad{[](Checkpoint& c) { c.window[2 * 8 + 1 * 4 + 3] = -5; },
               "checkpoint: window: negative count -5 at pass 2, layer 1, expert 3"},
           Bad{[](Checkpoint& c) { c.window_cursor = 3; }, "checkpoint: window cursor 3 outside [0, 3)"},
           Bad{[](Checkpoint& c) { c.window_cursor = -1; }, "checkpoint: window cursor -1 outside [0, 3)"},
           Bad{[](Checkpoint& c) {
                 c.config.window_passes = 0;
                 c.window.clear();
                 c.window_cursor = 1;
               },
               "checkpoint: window cursor 1 in a file without a window (W = 0; must be 0)"},
           Bad{[](Checkpoint& c) { c.epoch = -1; }, "checkpoint: epoch -1 or pass 55 outside [0, 2^62]"},
           Bad{[](Checkpoint& c) { c.pass = -1; }, "checkpoint: epoch 7 or pass -1 outside [0, 2^62]"},
           Bad{[](Checkpoint& c) { c.phy2log = {0, 1, 2, 3, 0, 1, 3, 2, 1, 1, 3, 3}; },
               "checkpoint: phy2log: placement: layer 1 has no replica of logical expert 0"},
       }) {
    auto c = good;
    b.edit(c);
    try {
      c.validate();
      ADD_FAILURE() << "accepted: " << b.message;
    } catch (const CheckpointError& e) {
      EXPECT_STREQ(e.what(), b.message);
    }
  }
}

// The same values in a file whose checksums are valid (rewritten through HDF5): read_checkpoint
// rejects them naming the file and the field.
TEST_F(CheckpointFile, NegativeWindowCount) {
  auto c = eplb::test::small_checkpoint();
  write_checkpoint(path, c);
  {
    auto f = eplb::test::edit(path);
    const auto d = eplb::test::H5Object::dataset(EPLB_H5_CHECK(H5Dopen2(f.get(), "window", H5P_DEFAULT)));
    c.window[2 * 8 + 1 * 4 + 3] = -5;  // pass 2, layer 1, expert 3
    EPLB_H5_CHECK(H5Dwrite(d.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.window.data()));
  }
  expect_bad({"window: negative count -5 at pass 2, layer 1, expert 3"});
}

TEST_F(CheckpointFile, WindowCursorPastTheRing) {
  write_checkpoint(path, eplb::test::small_checkpoint());  // W = 3
  {
    auto f = eplb::test::edit(path);
    const auto d = eplb::test::H5Object::dataset(EPLB_H5_CHECK(H5Dopen2(f.get(), "window", H5P_DEFAULT)));
    const auto a = eplb::test::H5Object::attribute(EPLB_H5_CHECK(H5Aopen(d.get(), "cursor", H5P_DEFAULT)));
    const int cursor = 3;
    EPLB_H5_CHECK(H5Awrite(a.get(), H5T_NATIVE_INT, &cursor));
  }
  expect_bad({"window cursor 3 outside [0, 3)"});
}

TEST_F(CheckpointFile, NegativeEpochOrPass) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  eplb::test::set_int_attr(path, "epoch", -1);  // epoch and pass are not in config_hash
  expect_bad({"epoch -1 or pass 55 outside [0, 2^62]"});
  write_checkpoint(path, eplb::test::small_checkpoint());
  eplb::test::set_int_attr(path, "pass", -2);
  expect_bad({"epoch 7 or pass -2 outside [0, 2^62]"});
}

TEST_F(CheckpointFile, PlacementMissingAnExpert) {
  write_checkpoint(path, eplb::test::small_checkpoint());
  {
    auto f = eplb::test::edit(path);
    const auto d = eplb::test::H5Object::dataset(EPLB_H5_CHECK(H5Dopen2(f.get(), "phy2log", H5P_DEFAULT)));
    const std::vector<int> p = {0, 1, 2, 3, 0, 1, 3, 2, 1, 1, 3, 3};  // layer 1 lacks expert 0
    EPLB_H5_CHECK(H5Dwrite(d.get(), H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, p.data()));
  }
  expect_bad({"phy2log: placement: layer 1 has no replica of logical expert 0"});
}

TEST(CheckpointMismatch, NamesEveryDifferingField) {
  auto a = eplb::test::small_checkpoint().config;
  auto b = a;
  b.topology.num_ranks = 3;
  b.window_passes = 9;
  b.policy = "sticky";
  const auto both = eplb::runtime::describe_mismatch(a, b, true);
  EXPECT_NE(both.find("num_ranks (file 2, running 3)"), std::string::npos) << both;
  EXPECT_NE(both.find("window_passes (file 3, running 9)"), std::string::npos) << both;
  EXPECT_NE(both.find("policy (file 'deepseek', running 'sticky')"), std::string::npos) << both;
  EXPECT_EQ(eplb::runtime::describe_mismatch(a, b, false).find("policy"), std::string::npos);
  EXPECT_EQ(eplb::runtime::describe_mismatch(a, a, true), "");
}

}  // namespace

// A file written by moe_sim with format version 1 (tests/data/checkpoint_v1.h5: 2 ranks,
// --layers 2 --experts 16 --groups 4 --passes 60 --interval 20 --window 10). Later formats
// must keep reading it.
TEST(CheckpointFormat, ReadsStoredVersion1File) {
  const auto c = read_checkpoint(std::string(EPLB_TEST_DATA_DIR) + "/checkpoint_v1.h5");
  EXPECT_EQ(c.format_version, 1);
  EXPECT_EQ(c.writer, "engine");
  EXPECT_EQ(c.config.topology, (eplb::algo::Topology{2, 16, 20, 2, 1, 4}));
  EXPECT_EQ(c.config.policy, "deepseek");
  EXPECT_EQ(c.config.window_passes, 10);
  EXPECT_EQ(c.epoch, 3);
  EXPECT_EQ(c.pass, 60);
  EXPECT_EQ(c.window.size(), 10u * 2 * 16);
  EXPECT_EQ(c.phy2log.size(), 2u * 20);
  ASSERT_EQ(c.stats.size(), 3u);
  EXPECT_EQ(c.stats[2].pass, 60);
  EXPECT_EQ(c.stats[2].epoch, 3);
}
