// Placement derivation, topology validation and the CSV readers.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "eplb/algo/io.hpp"

namespace {
using eplb::algo::Placement;
using eplb::algo::Topology;

TEST(Placement, DerivesLogcntAndLog2phyInSlotOrder) {
  Placement p(1, 3, 6, {2, 0, 2, 1, 2, 0});
  EXPECT_EQ(p.max_replicas(), 3);
  EXPECT_EQ(std::vector<int>(p.logcnt(0).begin(), p.logcnt(0).end()), (std::vector<int>{2, 1, 3}));
  auto l2p = [&](int e) { return std::vector<int>(p.log2phy(0, e).begin(), p.log2phy(0, e).end()); };
  EXPECT_EQ(l2p(0), (std::vector<int>{1, 5, -1}));
  EXPECT_EQ(l2p(1), (std::vector<int>{3, -1, -1}));
  EXPECT_EQ(l2p(2), (std::vector<int>{0, 2, 4}));
}

TEST(Placement, RejectsMissingExpertAndOutOfRange) {
  EXPECT_THROW(Placement(1, 3, 4, {0, 0, 1, 1}), std::invalid_argument);  // expert 2 missing
  EXPECT_THROW(Placement(1, 3, 3, {0, 1, 3}), std::invalid_argument);
  EXPECT_THROW(Placement(1, 3, 3, {0, 1, -1}), std::invalid_argument);
  EXPECT_THROW(Placement(2, 3, 3, {0, 1, 2}), std::invalid_argument);  // size
}

TEST(Placement, ContiguousFillsEverySlot) {
  const Topology t{2, 5, 8, 4, 1, 1};
  const auto p = Placement::contiguous(t);
  EXPECT_EQ(std::vector<int>(p.phy2log(1).begin(), p.phy2log(1).end()),
            (std::vector<int>{0, 1, 2, 3, 4, 0, 1, 2}));
}

TEST(Topology, NamesTheViolatedCondition) {
  auto msg = [](Topology t) {
    try {
      t.validate();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(msg({1, 8, 8, 0, 1, 1}).find("num_ranks >= 1"), std::string::npos);
  EXPECT_NE(msg({1, 8, 6, 2, 1, 1}).find("num_slots >= num_logical"), std::string::npos);
  EXPECT_NE(msg({1, 8, 9, 2, 1, 1}).find("num_slots % num_ranks"), std::string::npos);
  EXPECT_NE(msg({1, 8, 12, 3, 2, 1}).find("num_ranks % num_nodes"), std::string::npos);
  EXPECT_NE(msg({1, 9, 12, 4, 2, 2}).find("num_logical % num_groups"), std::string::npos);
  EXPECT_EQ(msg({1, 9, 12, 4, 2, 3}), "accepted");  // G % N != 0: global, any E
}

eplb::algo::LoadMatrix parse(const std::string& text) {
  std::istringstream in(text);
  return eplb::algo::read_load_csv(in, "load.csv");
}

std::string parse_error(const std::string& text) {
  try {
    parse(text);
  } catch (const eplb::algo::ParseError& e) {
    return e.what();
  }
  return "parsed";
}

TEST(LoadCsv, CommasSpacesCommentsAndBlankLines) {
  const auto m = parse("# header\n1, 2,3\n\n  4 5\t6\r\n# tail\n");
  EXPECT_EQ(m.num_layers, 2);
  EXPECT_EQ(m.num_logical, 3);
  EXPECT_EQ(m.values, (std::vector<double>{1, 2, 3, 4, 5, 6}));
  // A comment after the data of a line, with or without a space before it.
  const auto t = parse("1, 2,3  # layer 0\n4 5 6#layer 1\r\n7,8,9\t# , x\n");
  EXPECT_EQ(t.num_layers, 3);
  EXPECT_EQ(t.values, (std::vector<double>{1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(parse_error("1,2,# x\n"), "load.csv:1:5: line ends with a comma (empty field)");
  EXPECT_EQ(parse_error("1,2,3\n4,5 # 6\n"), "load.csv:2:1: ragged row: 2 values, expected 3 as in the first row");
}

TEST(LoadCsv, ErrorsCarryLineAndColumn) {
  EXPECT_EQ(parse_error("1,2,3\n4,5\n"),
            "load.csv:2:1: ragged row: 2 values, expected 3 as in the first row");
  EXPECT_EQ(parse_error("1,2,3\n4,x5,6\n"), "load.csv:2:3: not a number: 'x5'");
  EXPECT_EQ(parse_error("# only comments\n\n"), "load.csv:3:1: no data rows (empty input)");
  EXPECT_EQ(parse_error(""), "load.csv:1:1: no data rows (empty input)");
  // The end of the input: after the last line's text when it has no newline.
  EXPECT_EQ(parse_error("# a comment"), "load.csv:1:12: no data rows (empty input)");
  EXPECT_EQ(parse_error("1,,2\n"), "load.csv:1:3: empty field");
  EXPECT_EQ(parse_error("1,-2\n"), "load.csv:1:3: load must be finite, >= 0 and <= 1e30, got '-2'");
  EXPECT_EQ(parse_error("nan 1\n"), "load.csv:1:1: load must be finite, >= 0 and <= 1e30, got 'nan'");
}

TEST(LoadCsv, OddInputsAreNamed) {
  EXPECT_EQ(parse_error("1,1e400\n"), "load.csv:1:3: number out of range: '1e400'");
  EXPECT_EQ(parse_error("inf 1\n"), "load.csv:1:1: load must be finite, >= 0 and <= 1e30, got 'inf'");
  // Finite, but a layer's sum would overflow the policies' 32-bit floats (or even doubles).
  EXPECT_EQ(parse_error("1 2 1e308 1.7e308\n"), "load.csv:1:5: load must be finite, >= 0 and <= 1e30, got '1e308'");
  EXPECT_EQ(parse_error("1e30 1e31\n"), "load.csv:1:6: load must be finite, >= 0 and <= 1e30, got '1e31'");
  EXPECT_EQ(parse_error("1," + std::string(100, 'x') + "\n"),
            "load.csv:1:3: not a number: '" + std::string(40, 'x') + "...'");
  EXPECT_EQ(parse_error("1,\x01\x02\n"), std::string("load.csv:1:3: not a number: '?") + "?'");
  EXPECT_EQ(parse_error("1,1e400x\n"), "load.csv:1:3: not a number: '1e400x'");
  // A line past 64 MiB stops the reading there (a file without newlines is not read whole).
  EXPECT_EQ(parse_error(std::string((std::size_t{64} << 20) + 10, '1')),
            "load.csv:1:1: line longer than 64 MiB or too many lines (not a text file?)");
  // A UTF-8 byte order mark before the first line is skipped.
  const auto m = parse("\xEF\xBB\xBF# header\n1,2\n");
  EXPECT_EQ(m.values, (std::vector<double>{1, 2}));
  try {
    (void)eplb::algo::read_load_csv_file(".");
    ADD_FAILURE() << "read a directory as a load file";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("is a directory"), std::string::npos) << e.what();
  }
}

TEST(PlacementCsv, RoundTrip) {
  Placement p(2, 3, 4, {0, 1, 2, 0, 2, 2, 1, 0});
  std::ostringstream out;
  eplb::algo::write_placement_csv(out, p);
  EXPECT_EQ(out.str(), "0,1,2,0\n2,2,1,0\n");
  std::istringstream in(out.str());
  EXPECT_EQ(eplb::algo::read_placement_csv(in, "p.csv", 3), p);
}

std::string placement_error(const std::string& text, int num_logical = 3) {
  std::istringstream in(text);
  try {
    (void)eplb::algo::read_placement_csv(in, "p.csv", num_logical);
  } catch (const eplb::algo::ParseError& e) {
    return std::string("ParseError ") + e.what();
  } catch (const std::invalid_argument& e) {
    return std::string("invalid_argument ") + e.what();
  }
  return "parsed";
}

// Syntax errors are ParseErrors naming source:line:column; a well-formed matrix that is not
// a placement is rejected by the Placement constructor, whose message has no position.
TEST(PlacementCsv, MalformedInputIsNamed) {
  struct Bad {
    const char* text;
    const char* error;
  };
  for (const Bad& b : {
           Bad{"0,1,2\n0,1\n",
               "ParseError p.csv:2:1: ragged row: 2 values, expected 3 as in the first row"},
           Bad{"0,1,2\n0,1.5,2\n", "ParseError p.csv:2:3: not an integer: '1.5'"},
           Bad{"0,1,2\n# x\n2,1,-1\n", "ParseError p.csv:3:5: expert id -1 is outside [0, 3)"},
           Bad{"0,1,2,3\n", "ParseError p.csv:1:7: expert id 3 is outside [0, 3)"},
           Bad{"0,1,2,0\n0,0,1,1\n",
               "invalid_argument p.csv: placement: layer 1 has no replica of logical expert 2"},
           Bad{"", "ParseError p.csv:1:1: no data rows (empty input)"},
           Bad{"# only\n# comments\n", "ParseError p.csv:3:1: no data rows (empty input)"},
           Bad{"hello world\n", "ParseError p.csv:1:1: not an integer: 'hello'"},
           Bad{"0,1,2\n\x7f" "ELF\n", "ParseError p.csv:2:1: not an integer: '?ELF'"},
           Bad{"0,1,99999999999\n", "ParseError p.csv:1:5: number out of range: '99999999999'"},
           Bad{"0,1\n", "invalid_argument p.csv: placement: bad shape L=1 E=3 R=2 (need E >= 1, R >= E)"},
       }) {
    EXPECT_EQ(placement_error(b.text), b.error) << "input: " << b.text;
  }
}

// ---- mutated inputs: the readers either name a position or read exactly the file's numbers --

/// The numbers of a text in the CSV syntax, by a second, simpler reading (split on commas,
/// spaces and tabs; strtod / strtol): the reference a mutated input's accepted result must equal.
std::vector<std::vector<std::string>> reference_tokens(const std::string& text) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream in(text);
  std::string line;
  bool first = true;
  while (std::getline(in, line)) {
    if (first && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);
    first = false;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const auto start = line.find_first_not_of(" \t");
    if (start == std::string::npos || line[start] == '#') continue;
    line = line.substr(0, line.find('#'));  // a trailing comment
    std::vector<std::string> toks;
    std::string cur;
    for (char c : line + ",") {
      if (c == ',' || c == ' ' || c == '\t') {
        if (!cur.empty()) toks.push_back(cur);
        cur.clear();
      } else {
        cur += c;
      }
    }
    rows.push_back(toks);
  }
  return rows;
}

/// One to three random edits of `text`, biased towards the bytes the syntax cares about.
std::string mutate(std::string text, std::mt19937& rng) {
  static const std::string alphabet = std::string(",, \t\n\n\r#-+.eE0123456789xinfa_") + '\0' + "\xff\xEF";
  auto pick = [&](std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng); };
  const int edits = 1 + static_cast<int>(pick(3));
  for (int k = 0; k < edits; ++k) {
    const char c = alphabet[pick(alphabet.size())];
    const std::size_t at = text.empty() ? 0 : pick(text.size() + 1);
    switch (pick(4)) {
      case 0: if (at < text.size()) text[at] = c; break;
      case 1: text.insert(text.begin() + static_cast<std::ptrdiff_t>(at), c); break;
      case 2: if (at < text.size()) text.erase(at, 1 + pick(3)); break;
      default: {
        const std::size_t from = pick(text.size() + 1), len = pick(12);
        text.insert(at, text.substr(from, len));
      }
    }
  }
  return text;
}

/// what() of a ParseError must start "SOURCE:LINE:COL: " with LINE in [1, lines + 1].
void expect_position(const eplb::algo::ParseError& e, const std::string& source,
                     const std::string& text) {
  const std::string w = e.what();
  const std::string prefix = source + ":" + std::to_string(e.line()) + ":" + std::to_string(e.column()) + ": ";
  EXPECT_EQ(w.rfind(prefix, 0), 0u) << w;
  EXPECT_GE(e.line(), 1);
  EXPECT_LE(e.line(), static_cast<int>(std::count(text.begin(), text.end(), '\n')) + 1) << w;
  EXPECT_GE(e.column(), 1) << w;
  // The column lies on that line, at most one past its last byte.
  std::istringstream in(text);
  std::string line;
  for (int i = 0; i < e.line() && std::getline(in, line); ++i) {
  }
  if (e.line() <= static_cast<int>(std::count(text.begin(), text.end(), '\n')) + 1) {
    EXPECT_LE(e.column(), static_cast<int>(line.size()) + 1) << w;
  }
}

TEST(LoadCsv, MutatedInputsAreReadExactlyOrNamePosition) {
  const std::vector<std::string> seeds = {
      "# L=3 E=4\n1, 2, 3, 4\n5.5,6e2,0,7\n  8\t9 10 11\n",
      "\xEF\xBB\xBF" "0.25,1e30,3\r\n4,5,6\r\n",
      "1 2\n\n# c\n3 4\n",
  };
  std::mt19937 rng(12345);
  int accepted = 0, rejected = 0;
  for (int i = 0; i < 30000; ++i) {
    const std::string text = mutate(seeds[static_cast<std::size_t>(i) % seeds.size()], rng);
    try {
      const auto m = parse(text);
      ++accepted;
      const auto ref = reference_tokens(text);
      ASSERT_EQ(static_cast<int>(ref.size()), m.num_layers) << text;
      std::vector<double> want;
      for (const auto& row : ref) {
        ASSERT_EQ(static_cast<int>(row.size()), m.num_logical) << text;
        for (const auto& t : row) want.push_back(std::strtod(t.c_str(), nullptr));
      }
      ASSERT_EQ(m.values, want) << text;
      for (double v : m.values) ASSERT_TRUE(v >= 0 && v <= 1e30) << text;
    } catch (const eplb::algo::ParseError& e) {
      ++rejected;
      expect_position(e, "load.csv", text);
    }
  }
  // Both outcomes are exercised (the edits are not all harmless, nor all fatal).
  EXPECT_GT(accepted, 1000);
  EXPECT_GT(rejected, 1000);
}

TEST(PlacementCsv, MutatedInputsAreReadExactlyOrNamed) {
  const std::vector<std::string> seeds = {"0,1,2,0\n2, 2, 1, 0\n", "# p\n1 0 2 2\n\n0\t1\t2\t1\n"};
  std::mt19937 rng(54321);
  int accepted = 0, rejected = 0;
  for (int i = 0; i < 30000; ++i) {
    const std::string text = mutate(seeds[static_cast<std::size_t>(i) % seeds.size()], rng);
    std::istringstream in(text);
    try {
      const auto p = eplb::algo::read_placement_csv(in, "p.csv", 3);
      ++accepted;
      const auto ref = reference_tokens(text);
      ASSERT_EQ(static_cast<int>(ref.size()), p.num_layers()) << text;
      for (int l = 0; l < p.num_layers(); ++l) {
        const auto row = p.phy2log(l);
        ASSERT_EQ(ref[static_cast<std::size_t>(l)].size(), row.size()) << text;
        for (std::size_t j = 0; j < row.size(); ++j)
          ASSERT_EQ(std::strtol(ref[static_cast<std::size_t>(l)][j].c_str(), nullptr, 10), row[j]) << text;
      }
    } catch (const eplb::algo::ParseError& e) {
      ++rejected;
      expect_position(e, "p.csv", text);
    } catch (const std::invalid_argument& e) {  // well-formed, but not a placement
      ++rejected;
      EXPECT_EQ(std::string(e.what()).rfind("p.csv: placement: ", 0), 0u) << e.what();
    }
  }
  EXPECT_GT(accepted, 1000);
  EXPECT_GT(rejected, 1000);
}

TEST(StreamPath, DevAndProcPathsAndLinksToThemAreStreams) {
  namespace fs = std::filesystem;
  using eplb::algo::is_stream_path;
  EXPECT_TRUE(is_stream_path("/dev/stdout"));
  EXPECT_TRUE(is_stream_path("/dev/fd/1"));
  EXPECT_TRUE(is_stream_path("/proc/self/fd/1"));
  EXPECT_TRUE(is_stream_path("/dev/../dev/stdin"));
  const auto dir = fs::temp_directory_path() / ("eplb_stream_path_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::create_symlink("/dev/stdout", dir / "a");
  fs::create_symlink("a", dir / "b");  // relative, two hops
  fs::create_symlink(dir / "c", dir / "c");  // a loop
  std::ofstream(dir / "plain.csv") << "1\n";
  fs::create_symlink("plain.csv", dir / "to_plain");
  EXPECT_TRUE(is_stream_path((dir / "a").string()));
  EXPECT_TRUE(is_stream_path((dir / "b").string()));
  EXPECT_FALSE(is_stream_path((dir / "c").string()));
  EXPECT_FALSE(is_stream_path((dir / "plain.csv").string()));
  EXPECT_FALSE(is_stream_path((dir / "to_plain").string()));
  EXPECT_FALSE(is_stream_path((dir / "new.csv").string()));
  EXPECT_FALSE(is_stream_path("/devices/x"));  // a prefix, not the directory
  EXPECT_FALSE(is_stream_path("/dev/shm/checkpoint.h5"));  // a real directory of files
  EXPECT_FALSE(is_stream_path("/proc/cpuinfo"));
  EXPECT_TRUE(is_stream_path("/proc/12345/fd/2"));
  fs::remove_all(dir);
}

}  // namespace
