/* loop.c - a small reactor over epoll. It sleeps on the watched fds and
 * the ZMQ sockets' ZMQ_FDs, and reads a socket's ZMQ_EVENTS (what
 * zmq_poll does) only where it may have changed: after its fd signalled,
 * and before sleeping for every socket but the quiet ones (a ZMQ_FD does
 * not signal again what an operation on the socket already took in, and
 * any callback, timer or wake-up may have sent on any socket). The
 * wake-up is an eventfd watched like any other fd, so another thread (or
 * a signal handler) can interrupt the wait without a ZMQ socket of its
 * own.
 *
 * A shared loop (mdg_loop_share) lets another thread lead it while it
 * sleeps: the loop thread holds the lock but while it sleeps in
 * epoll_wait, and reads ZMQ_EVENTS only under the lock (a ZMQ socket is
 * used by one thread at a time). */
#include "loop.h"

#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

typedef struct watch {
    mdg_loop_fn fn;
    void *arg;
    bool quiet; /* used only by its callback, which reads it dry */
    bool look;  /* quiet, but left with something to read: look before sleeping */
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
    zmq_pollitem_t *items; /* [0] is the wake-up fd; a socket's fd is its ZMQ_FD */
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
    int epfd; /* what the loop thread sleeps in (without the lock) */
    /* shared loops only */
    pthread_mutex_t *lock;
    void *led;            /* the socket a leader serves (muted in epfd) */
    int64_t sleeps_until; /* when the loop thread's poll times out; -1: never */
    bool wake_after_lead; /* a leader made a timer due before that, or saw
                             what the loop thread must serve */
};

/* The next size of an array of cap elements that is full. */
static int grown(int cap)
{
    return cap ? 2 * cap : 8;
}

static int epoll_set(mdg_loop *l, int op, const zmq_pollitem_t *it, bool muted);

/* Watch an item with epoll (a socket by its ZMQ_FD, kept in the item's
 * fd, which zmq_pollitem_t leaves unused for sockets). */
static int epoll_add(mdg_loop *l, zmq_pollitem_t *it)
{
    if (it->socket) {
        size_t len = sizeof it->fd;
        if (zmq_getsockopt(it->socket, ZMQ_FD, &it->fd, &len) != 0)
            return -1;
    }
    return epoll_set(l, EPOLL_CTL_ADD, it, false);
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
    if (epoll_add(l, &l->items[l->nitems]) != 0)
        return MDG_ESYS;
    l->watches[l->nitems] = (watch){.fn = fn, .arg = arg};
    l->nitems++;
    return 0;
}

mdg_loop *mdg_loop_new(void)
{
    mdg_loop *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    /* items[0]: the wake-up, served by mdg_loop_run itself */
    if (l->epfd < 0 || l->wake_fd < 0 || mdg_loop_watch(l, NULL, l->wake_fd, ZMQ_POLLIN, NULL, NULL)) {
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
    if (l->epfd >= 0)
        close(l->epfd);
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
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, l->items[i].fd, NULL);
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
        if (l->items[i].socket == socket && (socket || l->items[i].fd == fd)) {
            l->items[i].events = events;
            if (!socket)
                epoll_set(l, EPOLL_CTL_MOD, &l->items[i], false);
        }
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
    if (l->lock && (l->sleeps_until < 0 || t->due < l->sleeps_until))
        l->wake_after_lead = true; /* made by a leader: the sleeping loop thread must know */
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

short mdg_loop_socket_events(void *socket)
{
    int events = 0;
    size_t len = sizeof events;
    return zmq_getsockopt(socket, ZMQ_EVENTS, &events, &len) == 0 ? (short)events : 0;
}

/* What epoll watches for item it: a socket's ZMQ_FD signals any change of
 * its ZMQ_EVENTS; a muted one (led) nothing. */
static uint32_t epoll_events(const zmq_pollitem_t *it, bool muted)
{
    if (it->socket)
        return muted ? 0 : EPOLLIN;
    return (it->events & ZMQ_POLLIN ? EPOLLIN : 0) | (it->events & ZMQ_POLLOUT ? EPOLLOUT : 0);
}

static int epoll_set(mdg_loop *l, int op, const zmq_pollitem_t *it, bool muted)
{
    struct epoll_event ev = {.events = epoll_events(it, muted), .data.fd = it->fd};
    return epoll_ctl(l->epfd, op, it->fd, &ev);
}

void mdg_loop_share(mdg_loop *l, pthread_mutex_t *lock)
{
    l->lock = lock;
}

void mdg_loop_set_quiet(mdg_loop *l, void *socket)
{
    for (int i = 1; i < l->nitems; i++)
        if (l->items[i].socket == socket) {
            /* looked at once: a fresh pipe does not signal its first
             * message (libzmq takes its reader as awake until a read
             * finds it empty, which ZMQ_EVENTS does) */
            l->watches[i].quiet = true;
            l->watches[i].look = true;
        }
}

void mdg_loop_look_again(mdg_loop *l, void *socket)
{
    for (int i = 1; i < l->nitems; i++)
        if (l->items[i].socket == socket)
            l->watches[i].look = true;
}

/* What epoll_wait said of fd (0: nothing). */
static uint32_t fired(const struct epoll_event *evs, int n, int fd)
{
    for (int k = 0; k < n; k++)
        if (evs[k].data.fd == fd)
            return evs[k].events;
    return 0;
}

/* Wait for events (what zmq_poll does), the lock of a shared loop released
 * only while sleeping in epoll_wait; the items' revents are set. */
static int wait_events(mdg_loop *l, long timeout)
{
    /* a socket the turn may have used (any but a quiet one) can hold what
     * its fd will not signal again: look before sleeping (revents marks it
     * to look again) */
    for (int i = 1; i < l->nitems; i++) {
        zmq_pollitem_t *it = &l->items[i];
        it->revents = 0;
        bool look = !l->watches[i].quiet || l->watches[i].look;
        l->watches[i].look = false;
        if (it->socket && look && (mdg_loop_socket_events(it->socket) & it->events)) {
            it->revents = 1;
            timeout = 0;
        }
    }
    l->sleeps_until = timeout < 0 ? -1 : mdg_now_ms() + timeout;
    l->wake_after_lead = false;
    struct epoll_event evs[16];
    if (l->lock)
        pthread_mutex_unlock(l->lock);
    int n = epoll_wait(l->epfd, evs, 16, (int)timeout);
    int err = errno;
    if (l->lock)
        pthread_mutex_lock(l->lock);
    if (n < 0) {
        errno = err;
        return -1;
    }
    /* A leader may have used any socket meanwhile (and it wakes the loop
     * thread when it gives the lead back): then look at them all. */
    bool led = l->lock && fired(evs, n, l->wake_fd);
    int ready = 0;
    for (int i = 0; i < l->nitems; i++) {
        zmq_pollitem_t *it = &l->items[i];
        if (it->socket) {
            bool look = it->revents || led || fired(evs, n, it->fd);
            it->revents = look ? (short)(mdg_loop_socket_events(it->socket) & it->events) : 0;
        } else {
            uint32_t ev = fired(evs, n, it->fd);
            it->revents = (short)(((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) ? ZMQ_POLLIN : 0) |
                                  ((ev & EPOLLOUT) ? ZMQ_POLLOUT : 0)) &
                          it->events;
        }
        ready += it->revents != 0;
    }
    return ready;
}

int mdg_loop_run(mdg_loop *l)
{
    if (l->lock)
        pthread_mutex_lock(l->lock);
    int rc = 0;
    while (!l->stop) {
        long timeout = next_timeout(l, mdg_now_ms());
        int n = wait_events(l, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = mdg_fail(MDG_ESYS, "poll: %s", zmq_strerror(errno));
            break;
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
        bool ended = false;
        for (int i = 1; i < l->nitems && !l->stop && !l->changed && !ended; i++) {
            short re = l->items[i].revents;
            ended = re && l->watches[i].fn(l, l->watches[i].arg, re);
        }
        if (ended || run_timers(l))
            break;
        if (l->turn_fn && l->turn_fn(l, l->turn_arg, 0))
            break;
    }
    l->stop = 1; /* however it ended: a leader must not take a loop that is gone */
    if (l->lock)
        pthread_mutex_unlock(l->lock);
    return rc;
}

static zmq_pollitem_t *find_socket(mdg_loop *l, void *socket)
{
    for (int i = 1; i < l->nitems; i++)
        if (l->items[i].socket == socket)
            return &l->items[i];
    return NULL;
}

bool mdg_loop_lead(mdg_loop *l, long wait_us)
{
    if (!l->lock)
        return false;
    if (pthread_mutex_trylock(l->lock) == 0)
        return true;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += wait_us * 1000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    return pthread_mutex_timedlock(l->lock, &until) == 0;
}

bool mdg_loop_lead_serve(mdg_loop *l, void *socket)
{
    zmq_pollitem_t *it = find_socket(l, socket);
    if (!it || epoll_set(l, EPOLL_CTL_MOD, it, true) != 0)
        return false;
    l->led = socket;
    return true;
}

int mdg_loop_lead_poll(mdg_loop *l, void *socket, long timeout_ms)
{
    int64_t now = mdg_now_ms();
    long next = next_timeout(l, now);
    if (next == 0) {
        l->wake_after_lead = true;
        return 2;
    }
    bool capped = next > 0 && (timeout_ms < 0 || next <= timeout_ms);
    if (capped)
        timeout_ms = next;
    /* poll() over the watches' fds, not zmq_poll: only the led socket was
     * used since the loop thread slept, so only its ZMQ_EVENTS can hold
     * what its fd no longer signals; the others' fds say when to look */
    struct pollfd pfd[8];
    int n = l->nitems < 8 ? l->nitems : 8, led = -1;
    for (int i = 0; i < n; i++) {
        pfd[i] = (struct pollfd){.fd = l->items[i].fd, .events = POLLIN};
        if (l->items[i].socket == socket)
            led = i;
        else if (!l->items[i].socket)
            pfd[i].events = (short)((l->items[i].events & ZMQ_POLLIN ? POLLIN : 0) |
                                    (l->items[i].events & ZMQ_POLLOUT ? POLLOUT : 0));
    }
    if (led < 0 || n < l->nitems)
        return 2; /* not a loop this was made for: the loop thread serves it */
    if (mdg_loop_socket_events(socket) & l->items[led].events)
        return 1;
    if (poll(pfd, (nfds_t)n, (int)timeout_ms) < 0)
        return errno == EINTR ? 0 : mdg_fail(MDG_ESYS, "poll: %s", strerror(errno));
    int ready = 0;
    for (int i = 0; i < n; i++) {
        if (!pfd[i].revents)
            continue;
        if (i != led)
            ready = 2; /* its wake-up or another watch: the loop thread's to serve */
        else if (!ready && (mdg_loop_socket_events(socket) & l->items[led].events))
            ready = 1;
    }
    if (!ready && capped && next_timeout(l, mdg_now_ms()) == 0)
        ready = 2;
    if (ready == 2) /* the loop thread must look, and may not have been woken */
        l->wake_after_lead = true;
    return ready;
}

void mdg_loop_lead_end(mdg_loop *l, bool wake)
{
    zmq_pollitem_t *it = l->led ? find_socket(l, l->led) : NULL;
    if (it && epoll_set(l, EPOLL_CTL_MOD, it, false) != 0)
        wake = true; /* cannot happen for an fd it watched; if it did, the loop reads it at least once */
    l->led = NULL;
    bool needed = l->wake_after_lead;
    l->wake_after_lead = false;
    pthread_mutex_unlock(l->lock);
    if (wake || needed)
        mdg_loop_wake(l);
}
