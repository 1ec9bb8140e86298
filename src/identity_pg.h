/* identity_pg.h - what the PostgreSQL backend's files share (not
 * installed): its state and its helpers over libpq.
 *
 * A handle holds two connections, one per role as SQLite's backend does:
 * the reader (ZAP lookups, listing, the revocation log) and the writer
 * (every change, one transaction each), each behind its own mutex; and,
 * once attached to a broker, a third that LISTENs for revocations on the
 * broker's loop thread (identity_pg_listen.c). Every statement is
 * parameterised (PQexecParams); nothing from a caller is pasted into SQL. */
#ifndef MDG_IDENTITY_PG_H
#define MDG_IDENTITY_PG_H

#include "identity_internal.h"

#include <libpq-fe.h>

/* The channel revocations are NOTIFYed on; the payload is the log's seq. */
#define PG_CHANNEL "messidge_revocations"

typedef struct pg_listener pg_listener;

typedef struct pg_store {
    PGconn *rd, *wr;
    pthread_mutex_t rd_lock, wr_lock;
    char *uri;             /* as given, for new connections */
    int64_t rd_reset_ms, wr_reset_ms; /* when each was last made again */
    pg_listener *listener; /* mdg_identity_attach's */
} pg_store;

static inline pg_store *pg_of(const mdg_identity *id)
{
    return id->be;
}

/* identity_pg.c */
/* libpq's connection keywords and values for uri, our defaults first so
 * that the URI's own settings win; name is the fallback application_name
 * (what pg_stat_activity shows). kw and val need 8 slots. */
void pg_conn_params(const char *uri, const char *name, const char **kw, const char **val);
/* libpq's message m on one line (its own are several, with tabs), in buf. */
const char *pg_message(const char *m, char *buf, size_t len);
/* Connect (blocking): 0, or < 0 with the reason in mdg_last_error(). */
int pg_connect(const mdg_identity *id, const char *name, PGconn **out);
/* Run one statement with text parameters (NULL: SQL NULL). 0 when it
 * succeeded; else < 0 with the reason in mdg_last_error(). With out, the
 * result (success or not: its SQLSTATE tells why) is left there for the
 * caller to PQclear. retry: the statement begins a unit of work, so a
 * broken connection may be made again first (at most once a second) and
 * the statement run again once if the connection breaks under it. */
int pg_run(const mdg_identity *id, PGconn *c, const char *sql, int n, const char *const *params,
           const char *what, bool retry, PGresult **out);
/* Whether a failed result carries this SQLSTATE. */
bool pg_sqlstate_is(const PGresult *r, const char *state);
int64_t pg_get_int64(const PGresult *r, int row, int col);

/* identity_pg_changes.c: the changes of the ops table */
int pg_json_valid(mdg_identity *id, const char *json);
int pg_invite(mdg_identity *id, const char *hash, const char *email, int64_t now,
              int64_t expires);
int pg_confirm(mdg_identity *id, const char *hash, const char *b64, int64_t now,
               char email[MAX_EMAIL + 1]);
int pg_add_key(mdg_identity *id, bool node, const char *name, const char *b64,
               const char *config, int64_t now);
int pg_revoke(mdg_identity *id, const char *b64, int64_t now);

/* identity_pg_listen.c */
int pg_attach(mdg_identity *id, mdg_broker *b);
void pg_listener_free(pg_listener *l);

#endif
