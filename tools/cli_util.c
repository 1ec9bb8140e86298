/* cli_util.c - see cli_util.h. */
#include "cli_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

static atomic_bool log_syslog;

int cli_parse_int(const char *text, int lo, int hi)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || v < lo || v > hi)
        return -1;
    return (int)v;
}

int cli_parse_port(const char *text)
{
    return cli_parse_int(text, 0, 65535);
}

int cli_write_port_file(const char *path, int port)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    int ok = fprintf(f, "%d\n", port) > 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

void cli_log(int level, const char *fmt, ...)
{
    char text[1024], line[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (atomic_load(&log_syslog)) {
        mdg_log_syslog(level, text, NULL);
    } else {
        mdg_log_format(line, sizeof line, level, text);
        fputs(line, stderr);
    }
}

void cli_log_to_syslog(const char *ident, int max_level)
{
    openlog(ident, LOG_PID, LOG_DAEMON);
    atomic_store(&log_syslog, true);
    mdg_set_log(mdg_log_syslog, NULL, max_level);
}

void cli_print_version(const char *program)
{
    printf("%s %s\n", program, mdg_version());
}

void cli_block_stop_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, set, NULL);
}

static void *signal_thread(void *arg)
{
    cli_signal_waiter *w = arg;
    int sig = 0;
    if (sigwait(&w->set, &sig) != 0 || atomic_load(&w->done))
        return NULL;
    atomic_store(&w->signalled, true);
    fprintf(stderr, "%s: %s, disconnecting\n", w->name, sig == SIGINT ? "SIGINT" : "SIGTERM");
    mdg_conn_disconnect(w->conn); /* wait_until_complete returns */
    return NULL;
}

void cli_signal_waiter_init(cli_signal_waiter *w, const char *name)
{
    w->name = name;
    w->conn = NULL;
    w->started = false;
    atomic_init(&w->signalled, false);
    atomic_init(&w->done, false);
    cli_block_stop_signals(&w->set);
}

int cli_signal_waiter_start(cli_signal_waiter *w, mdg_conn *conn)
{
    w->conn = conn;
    w->started = pthread_create(&w->thread, NULL, signal_thread, w) == 0;
    return w->started ? 0 : -1;
}

bool cli_signal_waiter_stop(cli_signal_waiter *w)
{
    if (w->started) {
        atomic_store(&w->done, true);
        pthread_kill(w->thread, SIGTERM);
        pthread_join(w->thread, NULL);
        w->started = false;
    }
    return atomic_load(&w->signalled);
}

bool cli_store_is_uri(const char *location)
{
    return location && (strncmp(location, "postgresql://", 13) == 0 ||
                        strncmp(location, "postgres://", 11) == 0);
}
