/* loop.c - a small reactor over zmq_poll. The wake-up is an eventfd that
 * zmq_poll watches like any other fd, so another thread (or a signal
 * handler) can interrupt the poll without a ZMQ socket of its own. */
#include "loop.h"

#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

typedef struct watch {
    mdg_loop_fn fn;
    void *arg;
} watch;

typedef struct timer {
    int id; /* 0 = free slot */
    int interval;
    bool repeat;
    int64_t due;
    uint64_t pass; /* the timer pass during which it was made */
    mdg_loop_fn fn;
    void *arg;
} timer;

/* Watches and timers live in arrays that double when full, as in Redis's
 * ae.c: a loop has a handful of each. Callbacks may add and remove both
 * while the loop walks them, so the walks index the arrays afresh at each
 * step and never hold a pointer across a callback. */
struct mdg_loop {
    zmq_pollitem_t *items; /* what zmq_poll takes; [0] is the wake-up fd */
    watch *watches;        /* watches[i] serves items[i] */
    int nitems, items_cap;
    timer *timers;
    int ntimers; /* slots up to the last in use; free ones (id 0) are reused */
    int timers_cap;
    int last_timer_id;
    uint64_t pass; /* timer passes run so far */
    int wake_fd;
    volatile int stop; /* set from other threads / signal handlers */
    mdg_loop_fn wake_fn;
    void *wake_arg;
    mdg_loop_fn turn_fn;
    void *turn_arg;
    bool changed; /* the watch list changed during dispatch: re-poll */
};

/* The next size of an array of cap elements that is full. */
static int grown(int cap)
{
    return cap ? 2 * cap : 8;
}

int mdg_loop_watch(mdg_loop *l, void *socket, int fd, short events, mdg_loop_fn fn, void *arg)
{
    if (l->nitems == l->items_cap) {
        int cap = grown(l->items_cap);
        zmq_pollitem_t *items = realloc(l->items, (size_t)cap * sizeof *items);
        if (!items)
            return MDG_ENOMEM;
        l->items = items; /* larger than items_cap says until watches grow too: harmless */
        watch *watches = realloc(l->watches, (size_t)cap * sizeof *watches);
        if (!watches)
            return MDG_ENOMEM;
        l->watches = watches;
        l->items_cap = cap;
    }
    l->items[l->nitems] = (zmq_pollitem_t){.socket = socket, .fd = fd, .events = events};
    l->watches[l->nitems] = (watch){fn, arg};
    l->nitems++;
    return 0;
}

mdg_loop *mdg_loop_new(void)
{
    mdg_loop *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    /* items[0]: the wake-up, served by mdg_loop_run itself */
    if (l->wake_fd < 0 || mdg_loop_watch(l, NULL, l->wake_fd, ZMQ_POLLIN, NULL, NULL)) {
        mdg_loop_destroy(&l);
        return NULL;
    }
    return l;
}

void mdg_loop_destroy(mdg_loop **pl)
{
    if (!pl || !*pl)
        return;
    mdg_loop *l = *pl;
    if (l->wake_fd >= 0)
        close(l->wake_fd);
    free(l->items);
    free(l->watches);
    free(l->timers);
    free(l);
    *pl = NULL;
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

static timer *find_timer(mdg_loop *l, int id)
{
    for (int i = 0; i < l->ntimers; i++)
        if (l->timers[i].id == id)
            return &l->timers[i];
    return NULL;
}

int mdg_loop_timer(mdg_loop *l, int interval_ms, bool repeat, mdg_loop_fn fn, void *arg)
{
    timer *t = find_timer(l, 0);
    if (!t) {
        if (l->ntimers == l->timers_cap) {
            int cap = grown(l->timers_cap);
            timer *timers = realloc(l->timers, (size_t)cap * sizeof *timers);
            if (!timers)
                return MDG_ENOMEM;
            l->timers = timers;
            l->timers_cap = cap;
        }
        t = &l->timers[l->ntimers++];
        t->id = 0; /* free until filled below: the id search reads it */
    }
    /* Ids wrap after INT_MAX timers (a connection makes one per delayed
     * acknowledgement), skipping those still in use. */
    int id = l->last_timer_id;
    do
        id = id == INT_MAX ? 1 : id + 1;
    while (find_timer(l, id));
    l->last_timer_id = id;
    *t = (timer){.id = id, .interval = interval_ms, .repeat = repeat,
                 .due = mdg_now_ms() + interval_ms, .pass = l->pass, .fn = fn, .arg = arg};
    return id;
}

void mdg_loop_cancel(mdg_loop *l, int id)
{
    timer *t = id > 0 ? find_timer(l, id) : NULL;
    if (!t)
        return;
    t->id = 0;
    while (l->ntimers > 0 && !l->timers[l->ntimers - 1].id)
        l->ntimers--;
}

void mdg_loop_on_turn(mdg_loop *l, mdg_loop_fn fn, void *arg)
{
    l->turn_fn = fn;
    l->turn_arg = arg;
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
    for (int i = 0; i < l->ntimers; i++) {
        if (!l->timers[i].id)
            continue;
        long d = l->timers[i].due > now ? (long)(l->timers[i].due - now) : 0;
        if (best < 0 || d < best)
            best = d;
    }
    return best;
}

/* Fires the timers that are due. A timer made by a callback during this
 * pass waits for the next one, so a callback that makes a 0 ms timer
 * cannot keep the pass going forever. */
static int run_timers(mdg_loop *l)
{
    int64_t now = mdg_now_ms();
    uint64_t pass = ++l->pass;
    for (int i = 0; i < l->ntimers; i++) {
        timer *t = &l->timers[i]; /* not used after fn: fn may move the array */
        if (!t->id || t->due > now || t->pass == pass)
            continue;
        mdg_loop_fn fn = t->fn;
        void *arg = t->arg;
        if (t->repeat)
            t->due = now + t->interval;
        else
            mdg_loop_cancel(l, t->id);
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
        if (l->turn_fn && l->turn_fn(l, l->turn_arg, 0))
            break;
    }
    return 0;
}
