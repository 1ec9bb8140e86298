/* loop.c - a small reactor over zmq_poll. The wake-up is an eventfd that
 * zmq_poll watches like any other fd, so another thread (or a signal
 * handler) can interrupt the poll without a ZMQ socket of its own. */
#include "loop.h"

#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

#define LOOP_MAX_WATCH 8
#define LOOP_MAX_TIMERS 16

typedef struct watch {
    mdg_loop_fn fn;
    void *arg;
} watch;

typedef struct timer {
    int id; /* 0 = free slot */
    int interval;
    bool repeat;
    int64_t due;
    mdg_loop_fn fn;
    void *arg;
} timer;

struct mdg_loop {
    zmq_pollitem_t items[LOOP_MAX_WATCH + 1]; /* [0] is the wake-up fd */
    watch watches[LOOP_MAX_WATCH + 1];
    int nitems;
    timer timers[LOOP_MAX_TIMERS];
    int next_timer_id;
    int wake_fd;
    volatile int stop; /* set from other threads / signal handlers */
    mdg_loop_fn wake_fn;
    void *wake_arg;
    bool changed; /* the watch list changed during dispatch: re-poll */
};

mdg_loop *mdg_loop_new(void)
{
    mdg_loop *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->wake_fd < 0) {
        free(l);
        return NULL;
    }
    l->items[0] = (zmq_pollitem_t){.fd = l->wake_fd, .events = ZMQ_POLLIN};
    l->nitems = 1;
    return l;
}

void mdg_loop_destroy(mdg_loop **pl)
{
    if (!pl || !*pl)
        return;
    close((*pl)->wake_fd);
    free(*pl);
    *pl = NULL;
}

int mdg_loop_watch(mdg_loop *l, void *socket, int fd, short events, mdg_loop_fn fn, void *arg)
{
    if (l->nitems > LOOP_MAX_WATCH)
        return MDG_ENOMEM;
    l->items[l->nitems] = (zmq_pollitem_t){.socket = socket, .fd = fd, .events = events};
    l->watches[l->nitems] = (watch){fn, arg};
    l->nitems++;
    return 0;
}

void mdg_loop_unwatch(mdg_loop *l, void *socket, int fd)
{
    for (int i = 1; i < l->nitems; i++) {
        if (l->items[i].socket != socket || (!socket && l->items[i].fd != fd))
            continue;
        memmove(&l->items[i], &l->items[i + 1], (size_t)(l->nitems - i - 1) * sizeof l->items[0]);
        memmove(&l->watches[i], &l->watches[i + 1], (size_t)(l->nitems - i - 1) * sizeof l->watches[0]);
        l->nitems--;
        l->changed = true;
        return;
    }
}

void mdg_loop_set_events(mdg_loop *l, void *socket, int fd, short events)
{
    for (int i = 1; i < l->nitems; i++)
        if (l->items[i].socket == socket && (socket || l->items[i].fd == fd))
            l->items[i].events = events;
}

int mdg_loop_timer(mdg_loop *l, int interval_ms, bool repeat, mdg_loop_fn fn, void *arg)
{
    for (int i = 0; i < LOOP_MAX_TIMERS; i++) {
        timer *t = &l->timers[i];
        if (t->id)
            continue;
        *t = (timer){.id = ++l->next_timer_id, .interval = interval_ms, .repeat = repeat,
                     .due = mdg_now_ms() + interval_ms, .fn = fn, .arg = arg};
        return t->id;
    }
    return MDG_ENOMEM;
}

void mdg_loop_cancel(mdg_loop *l, int id)
{
    for (int i = 0; i < LOOP_MAX_TIMERS; i++)
        if (l->timers[i].id == id)
            l->timers[i].id = 0;
}

void mdg_loop_on_wake(mdg_loop *l, mdg_loop_fn fn, void *arg)
{
    l->wake_fn = fn;
    l->wake_arg = arg;
}

void mdg_loop_wake(mdg_loop *l)
{
    uint64_t one = 1;
    ssize_t r = write(l->wake_fd, &one, sizeof one);
    (void)r; /* EAGAIN means a wake-up is already pending: fine */
}

void mdg_loop_stop(mdg_loop *l)
{
    l->stop = 1;
    mdg_loop_wake(l);
}

bool mdg_loop_stopping(mdg_loop *l)
{
    return l->stop;
}

/* Milliseconds until the next timer, or -1 when there is none. */
static long next_timeout(mdg_loop *l, int64_t now)
{
    long best = -1;
    for (int i = 0; i < LOOP_MAX_TIMERS; i++) {
        if (!l->timers[i].id)
            continue;
        long d = l->timers[i].due > now ? (long)(l->timers[i].due - now) : 0;
        if (best < 0 || d < best)
            best = d;
    }
    return best;
}

static int run_timers(mdg_loop *l)
{
    int64_t now = mdg_now_ms();
    for (int i = 0; i < LOOP_MAX_TIMERS; i++) {
        timer *t = &l->timers[i];
        if (!t->id || t->due > now)
            continue;
        mdg_loop_fn fn = t->fn;
        void *arg = t->arg;
        if (t->repeat)
            t->due = now + t->interval;
        else
            t->id = 0;
        if (fn(l, arg, 0))
            return 1;
    }
    return 0;
}

int mdg_loop_run(mdg_loop *l)
{
    while (!l->stop) {
        int n = zmq_poll(l->items, l->nitems, next_timeout(l, mdg_now_ms()));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return mdg_fail(MDG_ESYS, "zmq_poll: %s", zmq_strerror(errno));
        }
        if (l->items[0].revents) {
            uint64_t v;
            ssize_t r = read(l->wake_fd, &v, sizeof v);
            (void)r;
            if (l->stop)
                break;
            if (l->wake_fn && l->wake_fn(l, l->wake_arg, ZMQ_POLLIN))
                break;
        }
        l->changed = false;
        for (int i = 1; i < l->nitems && !l->stop && !l->changed; i++) {
            short re = l->items[i].revents;
            if (re && l->watches[i].fn(l, l->watches[i].arg, re))
                return 0;
        }
        if (run_timers(l))
            break;
    }
    return 0;
}
