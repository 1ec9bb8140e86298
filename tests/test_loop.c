/* test_loop.c - the event loop has no fixed limits: 100 timers and 20
 * watched fds all fire, and callbacks that add and remove timers and
 * watches while the loop walks them (growing the arrays under it) are
 * safe (ASan checks that nothing is read from a moved array). A broker
 * takes as many timers (mdg_broker_add_timer) as it is given. */
#include "loop.h"
#include "testutil.h"

#include <zmq.h>

#define TIMERS 100
#define LATE_TIMERS 60 /* added by a timer callback, while the timers are walked */
#define FDS 20
#define LATE_FDS 20 /* added by a watch callback, while the watches are walked */
#define CHAIN 50    /* a 0 ms timer that makes the next one: one per pass */

static int fired[TIMERS + LATE_TIMERS];
static int cancelled_id, cancelled_fired;
static int chain_left = CHAIN, chain_fired;
static int repeat_fired, repeat_id;
static int read_fds[FDS + LATE_FDS], write_fds[FDS + LATE_FDS];
static int fd_fired[FDS + LATE_FDS];
static bool late_fds_added;
static int deadline_id;

static bool all_done(void)
{
    for (int i = 0; i < TIMERS + LATE_TIMERS; i++)
        if (fired[i] != 1)
            return false;
    for (int i = 0; i < FDS + LATE_FDS; i++)
        if (fd_fired[i] != 1)
            return false;
    return chain_fired == CHAIN && repeat_fired == 3;
}

static int check_done(mdg_loop *loop)
{
    if (all_done())
        mdg_loop_stop(loop);
    return 0;
}

static int on_cancelled(mdg_loop *loop, void *arg, short revents)
{
    (void)arg, (void)revents;
    cancelled_fired++;
    return check_done(loop);
}

static int on_late_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)revents;
    fired[(intptr_t)arg]++;
    return check_done(loop);
}

static int on_timer(mdg_loop *loop, void *arg, short revents)
{
    (void)revents;
    intptr_t i = (intptr_t)arg;
    fired[i]++;
    if (i == 0) {
        /* Grow the timer array while run_timers walks it, and cancel a
         * timer that is not due yet. */
        for (int k = 0; k < LATE_TIMERS; k++)
            CHECK(mdg_loop_timer(loop, k % 5, false, on_late_timer,
                                 (void *)(intptr_t)(TIMERS + k)) > 0);
        mdg_loop_cancel(loop, cancelled_id);
    }
    return check_done(loop);
}

static int on_chain(mdg_loop *loop, void *arg, short revents)
{
    (void)arg, (void)revents;
    chain_fired++;
    if (--chain_left > 0)
        CHECK(mdg_loop_timer(loop, 0, false, on_chain, NULL) > 0);
    return check_done(loop);
}

static int on_repeat(mdg_loop *loop, void *arg, short revents)
{
    (void)arg, (void)revents;
    if (++repeat_fired == 3)
        mdg_loop_cancel(loop, repeat_id); /* a repeating timer ends itself */
    return check_done(loop);
}

static int on_deadline(mdg_loop *loop, void *arg, short revents)
{
    (void)arg, (void)revents;
    mdg_loop_stop(loop);
    return 0;
}

static int on_fd(mdg_loop *loop, void *arg, short revents)
{
    intptr_t i = (intptr_t)arg;
    char c;
    CHECK(revents & ZMQ_POLLIN);
    CHECK(read(read_fds[i], &c, 1) == 1);
    fd_fired[i]++;
    if (!late_fds_added) {
        /* Grow the watch array while the loop dispatches from it. */
        late_fds_added = true;
        for (int k = FDS; k < FDS + LATE_FDS; k++)
            CHECK_RC(mdg_loop_watch(loop, NULL, read_fds[k], ZMQ_POLLIN, on_fd, (void *)(intptr_t)k),
                     0);
    }
    mdg_loop_unwatch(loop, NULL, read_fds[i]);
    return check_done(loop);
}

#define BROKER_TIMERS 20

static atomic_int broker_fired[BROKER_TIMERS];

static void on_broker_timer(mdg_broker *b, void *arg)
{
    (void)b;
    atomic_fetch_add(&broker_fired[(intptr_t)arg], 1);
}

static bool broker_timers_fired(void)
{
    for (int i = 0; i < BROKER_TIMERS; i++)
        if (!atomic_load(&broker_fired[i]))
            return false;
    return true;
}

static void broker_timers(void)
{
    mdg_keys *keys = NULL;
    mdg_broker *b = NULL;
    mdg_broker_options o = {.bind_address = "127.0.0.1", .port = 0};
    CHECK_RC(mdg_keys_new(&keys), 0);
    CHECK_RC(mdg_broker_new(&b, keys, &o), 0);
    for (int i = 0; i < BROKER_TIMERS && b; i++)
        CHECK_RC(mdg_broker_add_timer(b, 1 + i, on_broker_timer, (void *)(intptr_t)i), 0);
    if (b && mdg_broker_start(b) == 0) {
        WAIT_FOR(broker_timers_fired(), 10000);
        CHECK(broker_timers_fired());
    } else {
        CHECK(!"broker started");
    }
    mdg_broker_destroy(&b);
    mdg_keys_destroy(&keys);
}

int main(void)
{
    mdg_loop *loop = mdg_loop_new();
    CHECK(loop != NULL);
    if (!loop)
        return t_done("test_loop");

    for (int i = 0; i < FDS + LATE_FDS; i++) {
        int p[2];
        CHECK(pipe(p) == 0);
        read_fds[i] = p[0];
        write_fds[i] = p[1];
        CHECK(write(write_fds[i], "x", 1) == 1); /* readable from the start */
    }
    for (int i = 0; i < FDS; i++)
        CHECK_RC(mdg_loop_watch(loop, NULL, read_fds[i], ZMQ_POLLIN, on_fd, (void *)(intptr_t)i), 0);

    for (int i = 0; i < TIMERS; i++) /* timer i is due in i ms */
        CHECK(mdg_loop_timer(loop, i, false, on_timer, (void *)(intptr_t)i) > 0);
    /* Cancelled by timer 0, which comes before it even in a pass where
     * both are due (a busy machine). */
    cancelled_id = mdg_loop_timer(loop, 50, false, on_cancelled, NULL);
    CHECK(cancelled_id > 0);
    CHECK(mdg_loop_timer(loop, 0, false, on_chain, NULL) > 0);
    repeat_id = mdg_loop_timer(loop, 1, true, on_repeat, NULL);
    CHECK(repeat_id > 0);
    deadline_id = mdg_loop_timer(loop, 20000, false, on_deadline, NULL);
    CHECK(deadline_id > 0);

    CHECK_RC(mdg_loop_run(loop), 0);
    CHECK(all_done());
    for (int i = 0; i < TIMERS + LATE_TIMERS; i++)
        if (fired[i] != 1) {
            fprintf(stderr, "timer %d fired %d times\n", i, fired[i]);
            CHECK(fired[i] == 1);
        }
    for (int i = 0; i < FDS + LATE_FDS; i++)
        if (fd_fired[i] != 1) {
            fprintf(stderr, "fd %d fired %d times\n", i, fd_fired[i]);
            CHECK(fd_fired[i] == 1);
        }
    CHECK(chain_fired == CHAIN);
    CHECK(repeat_fired == 3);
    CHECK(cancelled_fired == 0);

    /* Freed slots are reused and ids stay unique: cancel everything but
     * the deadline, then make more than ever lived at once. */
    mdg_loop_cancel(loop, deadline_id);
    int ids[2 * TIMERS];
    for (int i = 0; i < 2 * TIMERS; i++) {
        ids[i] = mdg_loop_timer(loop, 1000, false, on_deadline, NULL);
        CHECK(ids[i] > 0);
        for (int k = 0; k < i; k++)
            if (ids[k] == ids[i])
                CHECK(ids[k] != ids[i]);
    }

    for (int i = 0; i < FDS + LATE_FDS; i++) {
        close(read_fds[i]);
        close(write_fds[i]);
    }
    mdg_loop_destroy(&loop);
    CHECK(loop == NULL);

    broker_timers();
    return t_done("test_loop");
}
