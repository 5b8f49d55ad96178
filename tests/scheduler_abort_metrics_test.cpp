// A request aborted between steps (a streaming client that went away while its sequence waited)
// leaves the queue at once, and nothing else may come to tell the metrics: with no step after it,
// the running and waiting gauges would keep the last step's counts. The scheduler reports its queue
// on the abort itself. Its first stage here never answers, so no step completes after the first.
#include <gtest/gtest.h>

#include <chrono>

#include "actors/kv_block_manager.hpp"
#include "actors/metrics.hpp"
#include "actors/scheduler.hpp"
#include "tests/actor_stand_ins.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;

TEST(SchedulerAbortMetrics, AnAbortBetweenStepsReportsTheQueue) {
  caf::actor_system_config cfg;
  caf::actor_system system{test::quiet(cfg)};
  {
    caf::scoped_actor self{system};
    const caf::actor kv = spawn_kv_block_manager(system, 0, 64, 16, true, caf::actor{});
    const caf::actor stuck = system.spawn(test::silent_worker);
    SchedulerSpec spec;
    spec.config.max_model_len = 256;
    spec.kv_manager = kv;
    spec.metrics = self;
    const caf::actor scheduler = spawn_scheduler(system, spec);
    self->send(scheduler, atoms::plan::value, stuck, caf::actor{});
    SamplingParams params;
    params.max_tokens = 32;
    // The first goes in flight and stays there; the second waits behind it (one step in flight).
    self->send(scheduler, atoms::submit::value, SubmitRequest{1, {1, 2, 3, 4, 5}, params, self});
    ASSERT_GT(test::steps_in_flight(self, scheduler), 0);
    self->send(scheduler, atoms::submit::value, SubmitRequest{2, {6, 7, 8}, params, self});
    int waiting = 0;
    self->request(scheduler, caf::infinite, atoms::stats::value)
        .receive([&](const SchedulerStats& s) { waiting = s.waiting; }, [](caf::error&) {});
    ASSERT_EQ(waiting, 1);

    self->send(scheduler, atoms::abort::value, SeqId{2});
    bool reported = false, aborted = false;
    for (bool timed_out = false; !(reported && aborted) && !timed_out;)
      self->receive(
          [&](atoms::observe, const SchedulerMetrics& m) {
            reported = true;
            EXPECT_EQ(m.waiting, 0);
            EXPECT_EQ(m.running, 1);
          },
          [&](atoms::update, const SequenceUpdate& u) { aborted = aborted || (u.seq == 2 && u.aborted); },
          caf::after(5s) >> [&] { timed_out = true; });
    EXPECT_TRUE(aborted);
    EXPECT_TRUE(reported) << "no queue report after the abort: the gauges keep the last step's counts";
    for (const caf::actor& a : {scheduler, kv, stuck}) self->send_exit(a, caf::exit_reason::user_shutdown);
  }
  system.await_all_actors_done();
}

}  // namespace
}  // namespace troupe
