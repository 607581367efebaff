#pragma once
/// \file The weight transport: how expert bytes move between ranks during a migration.
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string_view>

namespace eplb::comm {

enum class MemorySpace { host, device };

/// Two queues of work on a rank. Work on one lane runs in issue order; the lanes may run
/// concurrently (device transport: two CUDA streams) and are ordered only through
/// mark()/wait(). Sends, receives and synchronize() belong to the transfer lane; copies name
/// their lane. A host transport runs everything synchronously (one queue).
enum class Lane { transfer, copy };

/// EPLB_MIGRATION_TRACE set and not "0" (docs/ENVIRONMENT.md): a migration prints on rank 0
/// when each step was issued and, where the transport can time its marks, when it ran.
inline bool migration_tracing() {
  static const bool on = [] {
    const char* v = std::getenv("EPLB_MIGRATION_TRACE");
    return v && *v && std::string_view(v) != "0";
  }();
  return on;
}

/// Seconds from environment variable `name` when it holds a positive number (surrounding
/// blanks allowed; "inf" and anything above 1e9 mean 1e9: no practical bound, e.g. under a
/// debugger), else `fallback` (the wait bounds: EPLB_NCCL_TIMEOUT_S, EPLB_TRANSFER_TIMEOUT_S,
/// EPLB_CUDA_TIMEOUT_S). A value that is set but not a positive number is reported on stderr
/// (once per transport created; for EPLB_CUDA_TIMEOUT_S once per value); an empty one means
/// the default silently.
inline double seconds_from_env(const char* name, double fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  while (end && (*end == ' ' || *end == '\t')) ++end;
  if (end != v && *end == '\0' && s > 0) return s < 1e9 ? s : 1e9;  // NaN fails s > 0
  std::fprintf(stderr, "eplb: ignoring %s='%s' (not a positive number of seconds); using %g s\n",
               name, v, fallback);
  return fallback;
}

/// Owned memory in a transport's space (staging); freed by the transport's deleter.
using Buffer = std::unique_ptr<std::byte, void (*)(std::byte*)>;

/// Point-to-point movement of weight bytes. A migration posts the sends and receives of one
/// round between begin_batch() and end_batch(); local copies issued after end_batch() on
/// Lane::transfer are ordered after the batch's receives (on Lane::copy only behind a
/// wait(Lane::copy, mark(Lane::transfer))). On a device transport all of this is stream-ordered
/// and end_batch() does not wait on the host; synchronize() does.
/// Every rank of the job must issue the matching calls (same peers, same sizes, same order
/// per peer). Buffers must stay valid until synchronize() (device) or end_batch() (host).
class Transport {
 public:
  virtual ~Transport() = default;
  virtual std::string_view name() const = 0;
  virtual MemorySpace memory_space() const = 0;

  virtual void begin_batch() = 0;
  virtual void send(const std::byte* buf, std::size_t bytes, int peer) = 0;
  virtual void recv(std::byte* buf, std::size_t bytes, int peer) = 0;
  virtual void end_batch() = 0;
  /// Copy within this rank's memory on `lane`, ordered after earlier work of that lane.
  virtual void copy(std::byte* dst, const std::byte* src, std::size_t bytes, Lane lane) = 0;
  /// Copy on the transfer lane: ordered after earlier operations.
  void copy(std::byte* dst, const std::byte* src, std::size_t bytes) {
    copy(dst, src, bytes, Lane::transfer);
  }
  /// One copy of copy_all().
  struct CopyOp {
    std::byte* dst;
    const std::byte* src;
    std::size_t bytes;
  };
  /// Independent copies on `lane` (none reads or writes another's destination): they may
  /// run in any order among themselves, after earlier work of the lane.
  virtual void copy_all(std::span<const CopyOp> ops, Lane lane) {
    for (const auto& op : ops) copy(op.dst, op.src, op.bytes, lane);
  }
  /// A point in the work issued so far on `lane`...
  using Mark = int;
  virtual Mark mark(Lane) { return 0; }
  /// ...after which work issued later on `lane` starts (no host wait for the mark itself;
  /// NcclTransport may wait, bounded, at any call to keep its queue short).
  virtual void wait(Lane, Mark) {}
  /// Milliseconds from mark `from` to mark `to` on the device clock, for tracing; valid
  /// after synchronize() and before the next mark(). Negative where marks cannot be timed
  /// (host transports).
  virtual double elapsed_ms(Mark /*from*/, Mark /*to*/) { return -1; }
  /// Returns when every operation issued so far, on both lanes, is complete.
  virtual void synchronize() = 0;
  /// Capacity for the next migration, asked for before its first transfer (PreparedMigration
  /// does): at most `messages` sends and receives in one batch, at most `copies` ops in one
  /// copy_all(), and `marks` calls to mark() before the next synchronize(). A transport that
  /// would allocate while issuing allocates here instead, so that running out of memory on one
  /// rank shows up before any weight moves. Default: nothing to do.
  virtual void reserve(std::size_t /*messages*/, std::size_t /*copies*/, std::size_t /*marks*/) {}
  /// Memory for staging, in this transport's memory space. The engine frees it after the
  /// transport is destroyed (so that transfers still in flight after a failure never target
  /// freed memory): the Buffer's deleter must not use the transport.
  virtual Buffer allocate(std::size_t bytes) = 0;
};

}  // namespace eplb::comm
