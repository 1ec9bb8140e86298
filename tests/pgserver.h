/* pgserver.h - a PostgreSQL server of a test's own: initdb'ed in a
 * temporary directory, listening on 127.0.0.1 on a free port (and a Unix
 * socket in that directory only), trusting local connections as the
 * superuser "messidge", stopped by its PID when the test ends.
 *
 * PostgreSQL refuses to run as root, and tests run as root here and in CI:
 * then initdb and the server run as the user "nobody" (the directory is
 * given to it); otherwise as the caller. The binaries are those of the
 * newest /usr/lib/postgresql/VERSION/bin, or of $MDG_PG_BINDIR.
 *
 * The server is stopped by t_pg_stop, by an atexit handler when the test
 * exits without it, and, should the test die (a crash, a sanitizer's
 * abort), by the kernel: it gets SIGQUIT when the test process ends. */
#ifndef MDG_PGSERVER_H
#define MDG_PGSERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct t_pg {
    pid_t pid;      /* the postmaster, or 0 */
    int port;
    char dir[128];  /* the temporary directory (data/, server.log) */
    char base[128]; /* "postgresql://messidge@127.0.0.1:PORT" */
} t_pg;

/* Start a server and wait (polling, with a deadline) until it accepts
 * connections. 0, or -1 after printing why (with the server's log). */
int t_pg_start(t_pg *pg);
/* Stop it (SIGINT: fast shutdown, then waits for the PID) and remove its
 * directory. Accepts a server not started, or stopped already. */
void t_pg_stop(t_pg *pg);
/* Make a new database and write its URI to uri. 0, or -1 (printed). */
int t_pg_new_db(const t_pg *pg, const char *name, char *uri, size_t len);
/* Run SQL (no parameters; several statements allowed) on uri as the
 * superuser; with out, the first row's first value. 0, or -1 (printed). */
int t_pg_exec(const char *uri, const char *sql, char *out, size_t len);

#endif
