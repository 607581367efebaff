#pragma once
// main() plumbing shared by the single-process tools (eplb-plan, eplb-eval).
#include <CLI/CLI.hpp>

#include "eplb/algo/io.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>

namespace eplb::tools {

/// Exit code for bad input: malformed files, impossible topologies, bad arguments.
constexpr int kExitBadInput = 2;

/// Parses the command line. Returns the exit code when the program must stop (0 after --help,
/// kExitBadInput on bad arguments; CLI11 has printed why), nullopt when it should run.
inline std::optional<int> parse_or_exit(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : kExitBadInput;
  }
  return std::nullopt;
}

/// An integer option's check: at least 1 (CLI::PositiveNumber printed "not in range 0.000000
/// to" and the 309 digits of DBL_MAX).
inline const CLI::Range kAtLeastOne(1, std::numeric_limits<int>::max());

/// Rejects a negative value given to an unsigned option (CLI11 wraps "-1" to 2^64 - 1).
inline std::string not_negative(const std::string& text) {
  return text.find('-') == std::string::npos ? std::string() : "must not be negative: " + text;
}

/// Throws std::invalid_argument naming `opt` unless a file can be created beside `path` and
/// `path` is not a directory (checked before the work, so that an unwritable output does not
/// fail only at the end). An existing device or FIFO, and a file-descriptor alias
/// (/dev/stdout), is accepted unprobed.
inline void require_writable(const char* opt, const std::string& path) {
  if (path.empty() || eplb::algo::is_stream_path(path)) return;
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (std::filesystem::is_directory(st))
    throw std::invalid_argument(std::string(opt) + ": '" + path + "' is a directory");
  if (std::filesystem::exists(st) && !std::filesystem::is_regular_file(st)) return;  // /dev/stdout, a FIFO
  const std::string probe = path + ".writable-check";
  std::FILE* f = std::fopen(probe.c_str(), "w");
  if (!f) throw std::invalid_argument(std::string(opt) + ": cannot write '" + path + "'");
  std::fclose(f);
  std::remove(probe.c_str());
}

/// Writes `path` (option `opt`) with write(std::ostream&). A regular file (or a new one; a
/// symbolic link counts as its target) is written through a temporary file beside it and a
/// rename: a failed write (a full disk) leaves no half-written file, an existing file stays as
/// it was, and the new one keeps its permissions. Anything else (a FIFO, a device) and any path
/// that is a file-descriptor alias (/dev/stdout: the file a shell redirected it to must be appended to,
/// not replaced) is written directly.
template <class Write>
void write_file_atomically(const char* opt, const std::string& path, Write write) {
  namespace fs = std::filesystem;
  auto failed = [&](const std::string& why) {
    return std::runtime_error(std::string(opt) + ": error writing '" + path + "': " + why);
  };
  std::error_code ec;
  const auto st = fs::status(path, ec);  // of the link's target, for a link
  const bool is_new = st.type() == fs::file_type::not_found;
  fs::path target = path;
  const bool stream = eplb::algo::is_stream_path(path);
  if (!stream && fs::is_regular_file(st) && fs::is_symlink(path, ec)) target = fs::canonical(path, ec);
  if (stream || (ec && !is_new) || (!is_new && !fs::is_regular_file(st))) {
    // Appending: a stream path opened with truncation would empty the file a shell redirected
    // stdout to (`>> log`), and the output already in it.
    std::fflush(stdout);
    std::fflush(stderr);
    std::ofstream f(path, stream ? std::ios::app : std::ios::out);
    if (!f) throw std::invalid_argument(std::string(opt) + ": cannot write '" + path + "'");
    write(f);
    if (!f.flush()) throw failed("the write failed");
    return;
  }
  const std::string tmp = target.string() + ".tmp." + std::to_string(::getpid());
  // O_EXCL: never through a file or link that is already there.
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) throw std::invalid_argument(std::string(opt) + ": cannot write '" + path + "': " + std::strerror(errno));
  ::close(fd);
  try {
    std::ofstream f(tmp, std::ios::trunc);
    write(f);
    f.close();  // flushes; sets failbit when a write or the close failed
    if (!f) throw failed("disk full? The file was not written");
    if (fs::exists(st)) fs::permissions(tmp, st.permissions(), ec);  // keep the old file's mode
    if (std::rename(tmp.c_str(), target.c_str()) != 0) throw failed(std::strerror(errno));
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

/// Runs body() (which returns the exit code); an exception becomes "<program>: error: <what>"
/// on stderr and kExitBadInput for std::invalid_argument, 1 for anything else.
template <class Body>
int run_reporting_errors(const char* program, Body body) {
  try {
    return body();
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, e.what());
    return kExitBadInput;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, e.what());
    return 1;
  }
}

}  // namespace eplb::tools
