#pragma once
/// \file Text formats of the command-line tools: load matrices and placements as CSV.
#include <iosfwd>
#include <stdexcept>
#include <string>

#include "eplb/algo/load.hpp"
#include "eplb/algo/placement.hpp"

namespace eplb::algo {

/// Malformed text input; what() names the source, line and column.
class ParseError : public std::invalid_argument {
 public:
  ParseError(const std::string& source, int line, int column, const std::string& what);
  int line() const { return line_; }
  int column() const { return column_; }

 private:
  int line_, column_;
};

/// Reads an [L][E] load matrix: one line per layer, E numbers separated by commas and/or
/// whitespace; blank lines are skipped, and a '#' starts a comment that runs to the end of its
/// line (a whole line, or after the data). Every row must have the
/// same length; values must be finite and >= 0. `source` names the input in messages.
LoadMatrix read_load_csv(std::istream& in, const std::string& source);
LoadMatrix read_load_csv_file(const std::string& path);

/// Reads phy2log: one line per layer, R integers (same syntax as loads). Throws ParseError
/// (source:line:column) for bad syntax or an expert id outside [0, num_logical), and
/// std::invalid_argument "source: placement: ..." for a layer (counted from 0 over the data
/// rows) that lacks some expert, or fewer slots than experts.
Placement read_placement_csv(std::istream& in, const std::string& source, int num_logical);

/// Writes phy2log, one line per layer, R integers separated by commas.
void write_placement_csv(std::ostream& out, const Placement& p);

/// Whether `path`, or a symbolic link on its way, is a file-descriptor alias: /dev/stdin,
/// /dev/stdout, /dev/stderr, /dev/fd/N or /proc/<pid>/fd/N (not /dev/shm and other real
/// directories). Such a path stands for an open stream: it must be
/// read or written through, never replaced by a rename (the file a shell redirected stdout to
/// would be replaced, and later output lost) nor probed by reading ahead (a pipe's bytes would
/// be consumed). Follows at most 40 links; never throws.
bool is_stream_path(const std::string& path) noexcept;

}  // namespace eplb::algo
