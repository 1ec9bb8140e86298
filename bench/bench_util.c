/* bench_util.c - timing, statistics and process helpers for the benchmarks. */
#include "bench.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

uint8_t payload[PARAMS_BYTES];

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double now_s(void)
{
    return (double)now_ns() / 1e9;
}

void lat_add(lat *l, double us)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4096;
        double *v = realloc(l->us, cap * sizeof *v);
        if (!v)
            return; /* keep what we have: a sample lost is not fatal */
        l->us = v;
        l->cap = cap;
    }
    l->us[l->n++] = us;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted samples. */
static double pct(const double *v, size_t n, double p)
{
    if (!n)
        return 0;
    size_t i = (size_t)(p / 100.0 * (double)n);
    return v[i < n ? i : n - 1];
}

void lat_finish(lat *l, bres *r, double elapsed)
{
    if (l->n) {
        qsort(l->us, l->n, sizeof *l->us, cmp_double);
        r->p50 = pct(l->us, l->n, 50);
        r->p99 = pct(l->us, l->n, 99);
        r->rate = elapsed > 0 ? (double)l->n / elapsed : 0;
        r->ok = true;
    }
    free(l->us);
    *l = (lat){0};
}

double median(double *v, int n)
{
    if (n <= 0)
        return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

bres na(const char *fmt, ...)
{
    bres r = {.ok = false};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r.why, sizeof r.why, fmt, ap);
    va_end(ap);
    return r;
}

static uint8_t *data;

void bulk_free(void)
{
    free(data);
    data = NULL;
}

const uint8_t *bulk_data(void)
{
    if (!data) { /* first use happens on the main thread, before any scenario */
        data = malloc(BULK_BYTES);
        if (!data) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        for (size_t i = 0; i < BULK_BYTES; i++)
            data[i] = (uint8_t)(i * 7 + 3);
    }
    return data;
}

long raise_nofile(long want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    if ((long)rl.rlim_cur >= want)
        return (long)rl.rlim_cur;
    struct rlimit up = {.rlim_cur = (rlim_t)want,
                        .rlim_max = rl.rlim_max > (rlim_t)want ? rl.rlim_max : (rlim_t)want};
    if (setrlimit(RLIMIT_NOFILE, &up) != 0) { /* not root: as far as the hard limit */
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    return (long)rl.rlim_cur;
}

long rss_kib(int pid)
{
    char path[64], line[256];
    long kib = 0;
    if (pid)
        snprintf(path, sizeof path, "/proc/%d/status", pid);
    else
        snprintf(path, sizeof path, "/proc/self/status");
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

void window_init(window *w)
{
    *w = (window){0};
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
}

void window_destroy(window *w)
{
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
}

void window_reply(window *w)
{
    pthread_mutex_lock(&w->lock);
    w->inflight--;
    w->done++;
    if (w->waiting && (w->inflight <= WINDOW - REFILL || w->inflight == 0))
        pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

bool window_wait(window *w, bool drain)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += CALL_TIMEOUT_MS / 1000;
    while (drain ? w->inflight > 0 : w->inflight > WINDOW - REFILL) {
        w->waiting = true;
        int rc = pthread_cond_timedwait(&w->cond, &w->lock, &ts);
        w->waiting = false;
        if (rc)
            return false;
    }
    return true;
}
