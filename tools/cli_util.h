/* cli_util.h - small helpers shared by the command-line programs (tools/,
 * demo/ and the test helper processes): option parsing, the port file
 * scripts wait for, and stopping on SIGINT/SIGTERM. */
#ifndef MDG_CLI_UTIL_H
#define MDG_CLI_UTIL_H

#include "messidge.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>

/* A port number in [0, 65535] from an option, or -1 (atoi would take "abc"
 * for 0: a free port, silently). */
int cli_parse_port(const char *text);
/* An integer in [lo, hi] from an option, or -1. */
int cli_parse_int(const char *text, int lo, int hi);

/* Whether an identity store location (--store) is a PostgreSQL
 * connection URI rather than a state directory (SQLite). */
bool cli_store_is_uri(const char *location);

/* Write the port (or a pid) to path via a temporary file and rename, so that a script
 * polling for the file never reads it half written. 0 or -1. */
int cli_write_port_file(const char *path, int port);

/* A server program's own log lines, in the library's form (mdg_log_format:
 * time, program[pid], level) on stderr, or to syslog after
 * cli_log_to_syslog. Library lines go the same way. */
void cli_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* From now on, this program's lines and the library's go to syslog(3)
 * (the journal under systemd) as ident[pid], facility daemon; library
 * lines up to max_level (< 0: MDG_LOG_LEVEL or warnings). */
void cli_log_to_syslog(const char *ident, int max_level);

/* "PROGRAM VERSION" on stdout, the version of the library it runs with
 * (--version). */
void cli_print_version(const char *program);

/* SIGINT and SIGTERM into set, blocked in the calling thread and so in
 * every thread it starts afterwards (call it before any starts): they are
 * then taken only by sigwait, where anything may be called. */
void cli_block_stop_signals(sigset_t *set);

/* A thread that takes SIGINT/SIGTERM and disconnects a connection
 * (mdg_conn_disconnect is not async-signal-safe: not from a handler). */
typedef struct cli_signal_waiter {
    sigset_t set;
    mdg_conn *conn;
    const char *name;      /* prints "NAME: SIGTERM, disconnecting" */
    atomic_bool signalled; /* a stop signal came from outside */
    atomic_bool done;      /* the program is finishing: the next signal is its own */
    pthread_t thread;
    bool started;
} cli_signal_waiter;

/* Block the signals (before any thread starts). */
void cli_signal_waiter_init(cli_signal_waiter *w, const char *name);
/* Start waiting for them on behalf of conn. 0 or -1. */
int cli_signal_waiter_start(cli_signal_waiter *w, mdg_conn *conn);
/* Wake the thread with a signal of our own if it still waits (the signals
 * are blocked everywhere, so only its sigwait takes it) and join it. True
 * when a stop signal came from outside. */
bool cli_signal_waiter_stop(cli_signal_waiter *w);

#endif
