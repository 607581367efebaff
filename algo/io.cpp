#include "eplb/algo/io.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <climits>
#include <filesystem>
#include <cmath>
#include <fstream>
#include <istream>
#include <ostream>
#include <vector>

namespace eplb::algo {

ParseError::ParseError(const std::string& source, int line, int column, const std::string& what)
    : std::invalid_argument(source + ":" + std::to_string(line) + ":" + std::to_string(column) +
                            ": " + what),
      line_(line),
      column_(column) {}

namespace {

/// A token for an error message: at most 40 characters, control bytes as '?'.
std::string shown(std::string_view tok) {
  std::string s(tok.substr(0, 40));
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  if (tok.size() > 40) s += "...";
  return s;
}

/// One number of type T (the whole token, std::from_chars), or a ParseError at (line, col):
/// "number out of range" for a well-formed one that does not fit, else "not <kind>".
template <class T>
T parse_token(std::string_view tok, const std::string& source, int line, int col, const char* kind) {
  T v{};
  const char* end = tok.data() + tok.size();
  const auto [p, ec] = std::from_chars(tok.data(), end, v);
  if (ec == std::errc() && p == end) return v;
  if (p == end && ec == std::errc::result_out_of_range)
    throw ParseError(source, line, col, "number out of range: '" + shown(tok) + "'");
  throw ParseError(source, line, col, std::string("not ") + kind + ": '" + shown(tok) + "'");
}

/// Lines longer than this are rejected (a binary file or one without newlines).
constexpr std::size_t kMaxLineBytes = std::size_t{64} << 20;

/// One line into `line` (without its '\n'); false at the end of the input, as std::getline.
/// Stops at kMaxLineBytes and sets `too_long`, so a file without newlines is not read whole.
bool read_line(std::istream& in, std::string& line, bool& too_long) {
  line.clear();
  too_long = false;
  const std::istream::sentry ok(in, true);
  if (!ok) return false;
  std::streambuf* sb = in.rdbuf();
  for (;;) {
    const int c = sb->sbumpc();
    if (c == std::char_traits<char>::eof()) {
      in.setstate(std::ios::eofbit);
      return !line.empty();
    }
    if (c == '\n') return true;
    if (line.size() == kMaxLineBytes) {
      too_long = true;
      return true;
    }
    line.push_back(static_cast<char>(c));
  }
}

/// Parses a matrix of numbers; `cell` converts one token (throws its own message).
template <class T, class Cell>
std::vector<T> read_matrix(std::istream& in, const std::string& source, int& rows, int& cols,
                           Cell cell) {
  std::vector<T> values;
  rows = 0;
  cols = -1;
  std::string line;
  int lineno = 0;
  bool too_long = false;
  int end_line = 1, end_col = 1;  // where the input ends, for "no data rows"
  while (read_line(in, line, too_long)) {
    ++lineno;
    if (too_long || lineno == INT_MAX)
      throw ParseError(source, lineno, 1, "line longer than 64 MiB or too many lines (not a text file?)");
    if (lineno == 1 && line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);  // UTF-8 byte order mark
    if (!line.empty() && line.back() == '\r') line.pop_back();
    // A last line without '\n' ends on itself (columns as in other messages: after the byte
    // order mark, without '\r'), any other one before the next line.
    end_line = in.eof() ? lineno : lineno + 1;
    end_col = in.eof() ? static_cast<int>(std::min<std::size_t>(line.size(), INT_MAX - 1)) + 1 : 1;
    std::size_t first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    // A '#' starts a comment that runs to the end of the line, after data too ("1, 2  # note").
    const std::size_t data_end = std::min(line.find('#', first), line.size());
    int count = 0;
    std::size_t i = 0;
    bool expect_value = true;  // a comma right after a comma (or at the start) is an error
    while (i < data_end) {
      const char c = line[i];
      if (c == ' ' || c == '\t') {
        ++i;
        continue;
      }
      if (c == ',') {
        if (expect_value)
          throw ParseError(source, lineno, static_cast<int>(i) + 1, "empty field");
        expect_value = true;
        ++i;
        continue;
      }
      const std::size_t end = std::min(line.find_first_of(" \t,", i), data_end);
      const std::string_view tok(line.data() + i, end - i);
      values.push_back(cell(tok, lineno, static_cast<int>(i) + 1));
      ++count;
      expect_value = false;
      i = end;
    }
    if (expect_value)
      throw ParseError(source, lineno, static_cast<int>(data_end) + 1,
                       "line ends with a comma (empty field)");
    if (cols < 0) {
      cols = count;
    } else if (count != cols) {
      throw ParseError(source, lineno, 1,
                       "ragged row: " + std::to_string(count) + " values, expected " +
                           std::to_string(cols) + " as in the first row");
    }
    ++rows;
  }
  if (in.bad()) throw ParseError(source, lineno + 1, 1, "read error");
  if (rows == 0) throw ParseError(source, end_line, end_col, "no data rows (empty input)");
  return values;
}

}  // namespace

LoadMatrix read_load_csv(std::istream& in, const std::string& source) {
  LoadMatrix m;
  m.values = read_matrix<double>(
      in, source, m.num_layers, m.num_logical,
      [&](std::string_view tok, int line, int col) {
        const double v = parse_token<double>(tok, source, line, col, "a number");
        if (!(v >= 0 && v <= LoadView::kMaxLoad))  // NaN fails too
          throw ParseError(source, line, col,
                           "load must be finite, >= 0 and <= 1e30, got '" + shown(tok) + "'");
        return v;
      });
  return m;
}

LoadMatrix read_load_csv_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw std::invalid_argument("load file '" + path + "' is a directory");
  errno = 0;
  std::ifstream f(path);
  if (!f) {
    const int err = errno;  // set by the underlying open() on POSIX systems
    throw std::invalid_argument("cannot open load file '" + path + "'" +
                                (err ? std::string(": ") + std::strerror(err) : std::string()));
  }
  return read_load_csv(f, path);
}

Placement read_placement_csv(std::istream& in, const std::string& source, int num_logical) {
  int rows = 0, cols = 0;
  auto v = read_matrix<int>(in, source, rows, cols, [&](std::string_view tok, int line, int col) {
    const int id = parse_token<int>(tok, source, line, col, "an integer");
    if (id < 0 || id >= num_logical)
      throw ParseError(source, line, col, "expert id " + std::to_string(id) + " is outside [0, " +
                                              std::to_string(num_logical) + ")");
    return id;
  });
  try {
    return Placement(rows, num_logical, cols, std::move(v));
  } catch (const std::invalid_argument& e) {  // the shape, or an expert without a slot
    throw std::invalid_argument(source + ": " + e.what());
  }
}

void write_placement_csv(std::ostream& out, const Placement& p) {
  std::string line;
  for (int l = 0; l < p.num_layers(); ++l) {
    line.clear();
    for (int v : p.phy2log(l)) {
      if (!line.empty()) line += ',';
      line += std::to_string(v);
    }
    line += '\n';
    out << line;
  }
}

bool is_stream_path(const std::string& path) noexcept {
  namespace fs = std::filesystem;
  try {
    std::error_code ec;
    fs::path p = fs::absolute(path, ec);
    if (ec) return false;
    for (int hop = 0; hop < 40; ++hop) {
      const std::string s = p.lexically_normal().string();
      // The file-descriptor aliases only: /dev/shm and other real directories under /dev
      // hold ordinary files.
      if (s == "/dev/stdin" || s == "/dev/stdout" || s == "/dev/stderr" || s.rfind("/dev/fd/", 0) == 0)
        return true;
      if (s.rfind("/proc/", 0) == 0) {  // /proc/<pid or self or thread-self>/fd/N
        const auto slash = s.find('/', 6);
        if (slash != std::string::npos && s.compare(slash, 4, "/fd/") == 0) return true;
      }
      if (!fs::is_symlink(p, ec)) return false;
      const fs::path target = fs::read_symlink(p, ec);
      if (ec) return false;
      p = target.is_absolute() ? target : p.parent_path() / target;
    }
  } catch (...) {  // allocation: not a stream as far as we can tell
  }
  return false;
}

}  // namespace eplb::algo
