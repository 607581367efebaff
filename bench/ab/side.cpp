// One side of bench/ab/main.cpp, compiled twice by ab_policy.sh: -DSIDE=old_ with
// -Deplb=eplb_old against the old sources, -DSIDE=new_ against the working tree. Plain
// functions with the side in their names, so that main.cpp needs neither build's headers.
#include <ctime>
#include <memory>

#include "eplb/algo/policy.hpp"
#include "bench/shapes.hpp"

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)

namespace {
struct Side {
  eplb::bench::Shape shape;
  eplb::algo::LoadMatrix load;
  std::unique_ptr<eplb::algo::Policy> policy;
  eplb::algo::Placement prev, out;
};
Side* side_of(void* p) { return static_cast<Side*>(p); }
}  // namespace

/// The policy on shape i, with one warm-up call (scratch sized, output allocated).
void* CAT(SIDE, make)(int i) {
  auto* s = new Side{eplb::bench::shapes()[static_cast<std::size_t>(i)], {}, nullptr, {}, {}};
  s->load = eplb::bench::lognormal_load(s->shape.topo, 42);
  s->policy = eplb::algo::make_policy("deepseek");
  s->prev = eplb::algo::Placement::contiguous(s->shape.topo);
  s->policy->rebalance_into(s->load.view(), s->shape.topo, &s->prev, s->out);
  return s;
}
const char* CAT(SIDE, name)(int i) { return eplb::bench::shapes()[static_cast<std::size_t>(i)].name; }
int CAT(SIDE, count)() { return static_cast<int>(eplb::bench::shapes().size()); }
/// One rebalance into the kept output; the thread's CPU seconds.
double CAT(SIDE, run)(void* p) {
  Side* s = side_of(p);
  timespec a{}, b{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
  s->policy->rebalance_into(s->load.view(), s->shape.topo, &s->prev, s->out);
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
  return static_cast<double>(b.tv_sec - a.tv_sec) + 1e-9 * static_cast<double>(b.tv_nsec - a.tv_nsec);
}
const int* CAT(SIDE, p2l)(void* p, long* n) {
  *n = static_cast<long>(side_of(p)->out.phy2log().size());
  return side_of(p)->out.phy2log().data();
}
const int* CAT(SIDE, l2p)(void* p, long* n) {
  *n = static_cast<long>(side_of(p)->out.log2phy().size());
  return side_of(p)->out.log2phy().data();
}
