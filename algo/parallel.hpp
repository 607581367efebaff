#pragma once
/// \file Splitting independent work (layers) over threads: one helper for the policy and the
/// migration planner.
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace eplb::algo::detail {

/// Runs work(t) for every t in [0, shares): share 0 on the calling thread, the others on
/// threads of their own. A thread that cannot be started (std::system_error, std::bad_alloc)
/// leaves its share to the calling thread, so every share runs exactly once. Every started
/// thread is joined; then the first exception any share threw is rethrown.
template <class Work>
void run_shares(int shares, Work&& work) {
  if (shares <= 1) {
    work(0);
    return;
  }
  std::vector<std::thread> pool;
  std::exception_ptr error;
  std::mutex error_mutex;
  auto keep_first = [&] {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (!error) error = std::current_exception();
  };
  int started = 1;  // shares [1, started) run on threads of their own
  try {
    pool.reserve(static_cast<std::size_t>(shares - 1));
    for (; started < shares; ++started) {
      const int t = started;
      pool.emplace_back([&, t] {
        try {
          work(t);
        } catch (...) {
          keep_first();
        }
      });
    }
  } catch (...) {  // no more threads: the rest run below
  }
  try {
    work(0);
    for (int t = started; t < shares; ++t) work(t);
  } catch (...) {
    keep_first();
  }
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace eplb::algo::detail
