/* loop.h - the event loop: epoll over sockets and fds, timers, and a
 * wake-up that other threads (and signal handlers) can trigger. One loop
 * per broker or connection, run by one thread. */
#ifndef MDG_LOOP_H
#define MDG_LOOP_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct mdg_loop mdg_loop;

/* Messages a socket's callback handles per wake-up before the loop's
 * timers, other sockets and other threads' messages get their turn. */
#define MDG_LOOP_BATCH 256

/* Called when the socket/fd is ready, or when a timer fires (revents 0).
 * Returning non-zero ends mdg_loop_run. */
typedef int (*mdg_loop_fn)(mdg_loop *loop, void *arg, short revents);

mdg_loop *mdg_loop_new(void);
void mdg_loop_destroy(mdg_loop **loop);

/* Watch a zmq socket (fd < 0) or a file descriptor for ZMQ_POLLIN/OUT. */
int mdg_loop_watch(mdg_loop *loop, void *socket, int fd, short events, mdg_loop_fn fn, void *arg);
/* The socket is used only by its callback, which reads it until it has
 * nothing (a monitor, a ZAP handler): the loop reads its ZMQ_EVENTS only
 * when its fd signals, not before every sleep. */
void mdg_loop_set_quiet(mdg_loop *loop, void *socket);
/* A quiet socket's callback stopped before it had read everything: the
 * loop looks at it once more before it sleeps. */
void mdg_loop_look_again(mdg_loop *loop, void *socket);
/* A ZMQ socket's ZMQ_EVENTS (ZMQ_POLLIN/OUT), 0 if it cannot be read.
 * Reading it may take the signal on its ZMQ_FD: look before sleeping. */
short mdg_loop_socket_events(void *socket);
/* Stop watching a socket / fd (before closing it). */
void mdg_loop_unwatch(mdg_loop *loop, void *socket, int fd);
/* Change the events watched on a socket / fd. */
void mdg_loop_set_events(mdg_loop *loop, void *socket, int fd, short events);

/* Timers fire every interval_ms (or once). Returns an id > 0, or < 0. */
int mdg_loop_timer(mdg_loop *loop, int interval_ms, bool repeat, mdg_loop_fn fn, void *arg);
void mdg_loop_cancel(mdg_loop *loop, int timer_id);

/* Called on the loop thread after every wake-up (see mdg_loop_wake). */
void mdg_loop_on_wake(mdg_loop *loop, mdg_loop_fn fn, void *arg);
/* Called at the end of every turn of the loop, after the callbacks and
 * timers of that turn and before it polls again (revents 0): what they
 * produced can go out together. */
void mdg_loop_on_turn(mdg_loop *loop, mdg_loop_fn fn, void *arg);

/* Run until mdg_loop_stop or a callback returns non-zero. */
int mdg_loop_run(mdg_loop *loop);
/* Thread-safe and async-signal-safe. */
void mdg_loop_wake(mdg_loop *loop);
void mdg_loop_stop(mdg_loop *loop);
bool mdg_loop_stopping(mdg_loop *loop);

/* Leading: another thread may serve a shared loop while the loop thread
 * sleeps (a blocking call that sends and waits for its reply itself saves
 * two thread hand-offs). The loop thread then holds lock but while it
 * sleeps in poll; whoever holds it may use the loop's sockets and state.
 * Before mdg_loop_run. */
void mdg_loop_share(mdg_loop *loop, pthread_mutex_t *lock);
/* Take the lead if the loop thread sleeps, or goes to sleep within
 * wait_us (the end of a short turn): true if taken. */
bool mdg_loop_lead(mdg_loop *loop, long wait_us);
/* The leader serves socket (one of the loop's watches): the loop thread no
 * longer wakes for it until mdg_loop_lead_end. False if it cannot. */
bool mdg_loop_lead_serve(mdg_loop *loop, void *socket);
/* For the leader: wait up to timeout_ms (< 0: no limit) for socket (one
 * of the loop's watches) to be ready. 1: it is; 0: the time is up; 2:
 * something else needs the loop thread (its wake-up, another watch, a
 * timer due): end the lead; < 0: error. */
int mdg_loop_lead_poll(mdg_loop *loop, void *socket, long timeout_ms);
/* Give the lead back, waking the loop thread if wake (it has work the
 * leader left, e.g. what the socket still holds) or if the leader made a
 * timer due before the loop thread's poll ends. */
void mdg_loop_lead_end(mdg_loop *loop, bool wake);

#endif
