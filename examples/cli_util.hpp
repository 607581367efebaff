#pragma once
// main() plumbing shared by the single-process tools (eplb-plan, eplb-eval).
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
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

/// Throws std::invalid_argument naming `opt` unless a file can be created beside `path` and
/// `path` is not a directory (checked before the work, so that an unwritable output does not
/// fail only at the end).
inline void require_writable(const char* opt, const std::string& path) {
  if (path.empty()) return;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw std::invalid_argument(std::string(opt) + ": '" + path + "' is a directory");
  const std::string probe = path + ".writable-check";
  std::FILE* f = std::fopen(probe.c_str(), "w");
  if (!f) throw std::invalid_argument(std::string(opt) + ": cannot write '" + path + "'");
  std::fclose(f);
  std::remove(probe.c_str());
}

/// Writes `path` (option `opt`) with write(std::ostream&) through a temporary file beside it
/// and a rename: a failed write (a full disk) leaves no half-written file, and an existing
/// file stays as it was.
template <class Write>
void write_file_atomically(const char* opt, const std::string& path, Write write) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp);
    if (!f) throw std::invalid_argument(std::string(opt) + ": cannot write '" + path + "'");
    write(f);
    f.close();  // flushes; sets failbit when a write or the close failed
    if (!f) {
      std::remove(tmp.c_str());
      throw std::runtime_error(std::string(opt) + ": error writing '" + path +
                               "' (disk full?); the file was not written");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    throw std::runtime_error(std::string(opt) + ": cannot write '" + path + "': " + std::strerror(err));
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
