// In-process A/B of the deepseek policy: two builds of the algo layer (the "old" one from a git
// revision, its namespace renamed by the build script) linked into one program and called
// alternately, call by call, on the shapes of bench/shapes.hpp. On a shared VM two binaries
// run minutes apart differ by up to 2x; within one process both sides see the same state.
// Prints, per shape, the medians of thread CPU time and whether the outputs (phy2log and
// log2phy) are identical. Usage: build-ab/ab [calls per side, default 200] [shape substring]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define DECLARE_SIDE(S)                                 \
  void* S##make(int);                                   \
  const char* S##name(int);                             \
  int S##count();                                       \
  double S##run(void*);                                 \
  const int* S##p2l(void*, long*);                      \
  const int* S##l2p(void*, long*);
DECLARE_SIDE(old_)
DECLARE_SIDE(new_)

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::max(2, std::atoi(argv[1])) : 200;
  bool all_same = true;
  for (int i = 0; i < new_count(); ++i) {
    if (argc > 2 && !std::strstr(new_name(i), argv[2])) continue;
    void* o = old_make(i);
    void* n = new_make(i);
    std::vector<double> t_old, t_new;
    for (int r = 0; r < reps; ++r) {  // alternate which side goes first
      if (r & 1) {
        t_old.push_back(old_run(o));
        t_new.push_back(new_run(n));
      } else {
        t_new.push_back(new_run(n));
        t_old.push_back(old_run(o));
      }
    }
    long a = 0, b = 0;
    const int* pa = old_p2l(o, &a);
    const int* pb = new_p2l(n, &b);
    bool same = a == b && std::equal(pa, pa + a, pb);
    pa = old_l2p(o, &a);
    pb = new_l2p(n, &b);
    same = same && a == b && std::equal(pa, pa + a, pb);
    all_same = all_same && same;
    std::sort(t_old.begin(), t_old.end());
    std::sort(t_new.begin(), t_new.end());
    const double mo = t_old[reps / 2] * 1e6, mn = t_new[reps / 2] * 1e6;
    std::printf("%-11s old %7.1f us  new %7.1f us  new/old %.3f  %s\n", new_name(i), mo, mn, mn / mo,
                same ? "same output" : "DIFFERENT OUTPUT");
  }
  return all_same ? 0 : 1;
}
