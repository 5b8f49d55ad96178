// What a GPU failure needs and the CPU backend never shows (its thread groups free a failed rank's
// peers): a peer that never answers. A pipeline stage ends a micro-batch on the first worker error
// without waiting for the silent rank, and fails later ones at once; a scheduler told the engine
// failed ends its sequences in flight (their step never completes) with the cause, frees their
// blocks and refuses new ones. Actors with stand-ins for the stuck workers and stages.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "actors/kv_block_manager.hpp"
#include "actors/pipeline_stage.hpp"
#include "actors/scheduler.hpp"
#include "tests/actor_stand_ins.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using test::quiet;
using test::silent_worker;

caf::behavior failing_worker() {
  return {
      [](atoms::run, const PlanPtr& plan) {
        StepResult r;
        r.micro_batch = plan->micro_batch;
        r.error = "worker 1: fault injected at step 0 (--inject-fault)";
        return r;
      },
  };
}

TEST(RuntimeFaultActors, AStageEndsAMicroBatchOnTheFirstErrorWithoutItsSilentPeer) {
  caf::actor_system_config cfg;
  caf::actor_system system{quiet(cfg)};
  {
    caf::scoped_actor self{system};
    const caf::actor stuck = system.spawn(silent_worker);
    StageSpec spec;
    spec.workers = {stuck, system.spawn(failing_worker)};
    spec.scheduler = self;
    const caf::actor stage = spawn_pipeline_stage(system, spec);
    for (uint64_t mb = 0; mb < 2; ++mb) {
      auto plan = std::make_shared<StepPlan>();
      plan->micro_batch = mb;
      self->send(stage, atoms::run::value, PlanPtr(plan));
      bool done = false;
      self->receive(
          [&](atoms::done, const PlanPtr& p, const StepResult& r) {
            done = true;
            EXPECT_EQ(p->micro_batch, mb);
            EXPECT_EQ(r.error, "worker 1: fault injected at step 0 (--inject-fault)") << "micro-batch " << mb;
          },
          caf::after(5s) >> [] {});
      EXPECT_TRUE(done) << "micro-batch " << mb << " waited for a worker that never answers";
    }
    for (const caf::actor& a : {stage, stuck, spec.workers[1]}) self->send_exit(a, caf::exit_reason::user_shutdown);
  }
  system.await_all_actors_done();
}

TEST(RuntimeFaultActors, ASchedulerToldTheEngineFailedEndsItsSequencesInFlight) {
  caf::actor_system_config cfg;
  caf::actor_system system{quiet(cfg)};
  {
    caf::scoped_actor self{system};
    const caf::actor kv = spawn_kv_block_manager(system, 0, 64, 16, true, caf::actor{});
    const caf::actor stuck = system.spawn(silent_worker);  // the first stage: steps never come back
    SchedulerSpec spec;
    spec.config.max_model_len = 256;
    std::atomic<int> failures{0};
    spec.on_failure = [&](const std::string&) { ++failures; };
    spec.kv_manager = kv;
    const caf::actor scheduler = spawn_scheduler(system, spec);
    self->send(scheduler, atoms::plan::value, stuck, caf::actor{});
    SamplingParams params;
    params.max_tokens = 32;
    for (SeqId id = 1; id <= 3; ++id)
      self->send(scheduler, atoms::submit::value, SubmitRequest{id, {1, 2, 3, 4, 5}, params, self});
    // Wait until a step holds blocks and is in flight.
    ASSERT_GT(test::steps_in_flight(self, scheduler), 0);

    const std::string why = "the engine failed: worker 1: fault injected at step 0 (--inject-fault)";
    self->send(scheduler, atoms::fail::value, why);
    int ended = 0;
    bool timed_out = false;
    while (ended < 3 && !timed_out)
      self->receive(
          [&](atoms::update, const SequenceUpdate& u) {
            ++ended;
            EXPECT_TRUE(u.aborted) << u.seq;
            EXPECT_EQ(u.error, why) << u.seq;
          },
          caf::after(5s) >> [&] { timed_out = true; });
    EXPECT_EQ(ended, 3) << "sequences in flight did not end";
    EXPECT_EQ(failures.load(), 1);

    // Refused at once, with the cause.
    self->send(scheduler, atoms::submit::value, SubmitRequest{4, {1, 2, 3}, params, self});
    bool refused = false;
    self->receive(
        [&](atoms::update, const SequenceUpdate& u) {
          refused = u.seq == 4 && u.aborted && u.error == why;
        },
        caf::after(5s) >> [] {});
    EXPECT_TRUE(refused);

    int used = -1;
    self->request(kv, caf::infinite, atoms::stats::value).receive([&](const BlockManagerStats& s) { used = s.used_blocks; }, [](caf::error&) {});
    EXPECT_EQ(used, 0) << "the failed sequences' blocks are still held";
    self->request(scheduler, caf::infinite, atoms::stats::value).receive(
        [&](const SchedulerStats& s) {
          EXPECT_EQ(s.running, 0);
          EXPECT_EQ(s.waiting, 0);
        },
        [](caf::error&) {});
    for (const caf::actor& a : {scheduler, kv, stuck}) self->send_exit(a, caf::exit_reason::user_shutdown);
  }
  system.await_all_actors_done();
}

}  // namespace
}  // namespace troupe
