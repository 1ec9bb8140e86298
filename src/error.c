/* error.c - error codes, the thread-local detail text, and logging. */
#include "internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char last_error[512];

const char *mdg_strerror(int err)
{
    switch (err) {
    case MDG_OK: return "success";
    case MDG_EINVAL: return "invalid argument";
    case MDG_ENOMEM: return "out of memory";
    case MDG_ENOENT: return "no such file";
    case MDG_EBADKEY: return "not a valid key";
    case MDG_EIO: return "input/output error";
    case MDG_ETIMEDOUT: return "timed out";
    case MDG_EREMOTE: return "remote handler failed";
    case MDG_EPROTO: return "protocol error";
    case MDG_ECLOSED: return "closed";
    case MDG_EAUTH: return "key refused by the broker";
    case MDG_EHANDSHAKE: return "CURVE handshake failed";
    case MDG_ENOTFOUND: return "not found";
    case MDG_ETYPE: return "wrong type";
    case MDG_ESTATE: return "not valid in this state";
    case MDG_EAGAIN: return "would block";
    case MDG_ESYS: return "system error";
    case MDG_EBUSY: return "broker at its connection limit";
    default: return "unknown error";
    }
}

const char *mdg_last_error(void)
{
    return last_error;
}

int mdg_fail(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return err;
}

int mdg_fail_plain(int err)
{
    snprintf(last_error, sizeof last_error, "%s", mdg_strerror(err));
    return err;
}

/* The log sink is process-wide; a mutex keeps lines whole and lets the
 * sink be swapped while loop threads run. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static mdg_log_fn log_fn;
static void *log_arg;
static int log_level = -1; /* -1: not yet read from the environment */

static int default_level(void)
{
    const char *env = getenv("MDG_LOG_LEVEL");
    if (env && *env >= '0' && *env <= '3')
        return *env - '0';
    return MDG_LOG_WARN;
}

void mdg_set_log(mdg_log_fn fn, void *arg, int max_level)
{
    pthread_mutex_lock(&log_lock);
    log_fn = fn;
    log_arg = arg;
    log_level = max_level >= 0 ? max_level : default_level();
    pthread_mutex_unlock(&log_lock);
}

bool mdg_log_enabled(int level)
{
    int l = __atomic_load_n(&log_level, __ATOMIC_RELAXED);
    if (l < 0) {
        l = default_level();
        __atomic_store_n(&log_level, l, __ATOMIC_RELAXED);
    }
    return level <= l;
}

int mdg_log_format(char *buf, size_t len, int level, const char *text)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    struct timespec ts;
    struct tm tm;
    char when[32] = "";
    clock_gettime(CLOCK_REALTIME, &ts);
    if (gmtime_r(&ts.tv_sec, &tm))
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    return snprintf(buf, len, "%s.%03ldZ %s[%ld] %s: %s\n", when, ts.tv_nsec / 1000000L,
                    program_invocation_short_name, (long)getpid(), names[level & 3], text);
}

void mdg_log_syslog(int level, const char *text, void *arg)
{
    static const int priority[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    (void)arg;
    syslog(priority[level & 3], "%s", text); /* openlog (if any) named the program */
}

void mdg_log(int level, const char *fmt, ...)
{
    char text[1024], line[1200];
    va_list ap;

    if (!mdg_log_enabled(level))
        return;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_lock);
    if (log_fn) {
        log_fn(level, text, log_arg);
    } else {
        mdg_log_format(line, sizeof line, level, text);
        fputs(line, stderr);
    }
    pthread_mutex_unlock(&log_lock);
}

bool mdg_ratelog_due(mdg_ratelog *r, int interval_ms, unsigned *held)
{
    int64_t now = mdg_now_ms();
    if (r->said && now - r->at < interval_ms) {
        r->held++;
        return false;
    }
    r->said = true;
    r->at = now;
    *held = r->held;
    r->held = 0;
    return true;
}

int64_t mdg_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
