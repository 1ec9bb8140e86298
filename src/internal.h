/* internal.h - helpers shared by the library's layers (not installed). */
#ifndef MDG_INTERNAL_H
#define MDG_INTERNAL_H

#include "messidge.h"

#include <stdio.h>

/* Set the thread-local detail text and return err, so that error paths
 * read: return mdg_fail(MDG_ENOENT, "cannot read %s: %s", path, why); */
int mdg_fail(int err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Set the detail text to err's short text (for paths with nothing to add). */
int mdg_fail_plain(int err);

/* Log a line through the configured sink. */
void mdg_log(int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
bool mdg_log_enabled(int level);

/* A log line that may repeat fast (refusals under load): due the first
 * time, then at most once per interval_ms; *held gets how many times it
 * was not due since the last line. One thread per mdg_ratelog. */
typedef struct mdg_ratelog {
    int64_t at;
    bool said;
    unsigned held;
} mdg_ratelog;
bool mdg_ratelog_due(mdg_ratelog *r, int interval_ms, unsigned *held);

/* A copy of a key pair, for a connection or a broker to keep (keys.c):
 * the pair is not checked again. 0, MDG_EINVAL or MDG_ENOMEM. */
int mdg_keys_copy(mdg_keys **out, const mdg_keys *keys);
/* Create a private directory (0700, last component only) or check that it
 * is one (keys.c). what names it in errors. 0 or MDG_EIO. */
int mdg_ensure_dir(const char *dir, const char *what);
/* Monotonic clock in milliseconds. */
int64_t mdg_now_ms(void);

/* Introspection for tests: calls the broker has forwarded to nodes and is
 * still routing replies for (loop thread, or approximate). */
size_t mdg_broker_forward_count(const mdg_broker *b);

#endif
