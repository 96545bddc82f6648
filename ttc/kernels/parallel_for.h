// Splitting one custom call's work over XLA's intra-op thread pool.
#ifndef TTC_KERNELS_PARALLEL_FOR_H_
#define TTC_KERNELS_PARALLEL_FOR_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ttc {

// Runs item(i) for i in [0, total) on the calling thread and up to
// pool.num_threads() - 1 pool tasks, which take the next undone item until none is
// left; returns when every item is done. A task may start after the call returned
// (the pool was busy): it then finds no work left and only touches the shared
// state, which it keeps alive. `item` is copied into that state.
template <typename Item>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t total, Item item) {
  struct State {
    explicit State(Item fn, int64_t n) : item(std::move(fn)), total(n) {}
    Item item;
    int64_t total;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable all_done;

    void Work() {
      int64_t finished = 0;
      for (int64_t i; (i = next.fetch_add(1)) < total; ++finished) item(i);
      if (finished && done.fetch_add(finished) + finished == total) {
        std::lock_guard<std::mutex> lock(mu);
        all_done.notify_all();
      }
    }
  };
  if (total <= 0) return;
  auto state = std::make_shared<State>(std::move(item), total);
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([state] { state->Work(); });
  state->Work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->all_done.wait(lock, [&] { return state->done.load() == total; });
}

}  // namespace ttc

#endif  // TTC_KERNELS_PARALLEL_FOR_H_
