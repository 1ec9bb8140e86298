/* identity_sqlite.h - what the SQLite backend's two files share (not
 * installed): its state and helpers. identity_sqlite.c opens and reads,
 * identity_sqlite_changes.c changes. A handle is shared by threads:
 * rd_lock guards the reader (and role_stmt), wr_lock the writer. */
#ifndef MDG_IDENTITY_SQLITE_H
#define MDG_IDENTITY_SQLITE_H

#include "identity_internal.h"

#include <sqlite3.h>

typedef struct sqlite_store {
    sqlite3 *rd, *wr;
    pthread_mutex_t rd_lock, wr_lock;
    sqlite3_stmt *role_stmt; /* cached: the ZAP handler's lookup */
} sqlite_store;

static inline sqlite_store *sqlite_of(const mdg_identity *id)
{
    return id->be;
}

/* identity_sqlite.c: helpers for both files */
/* Fail with SQLite's message for db, naming the database file. */
int identity_db_fail(const mdg_identity *id, sqlite3 *db, const char *what);
/* Run SQL without results (may hold several statements). */
int identity_exec(const mdg_identity *id, sqlite3 *db, const char *sql, const char *what);
int identity_prepare(const mdg_identity *id, sqlite3 *db, const char *sql, sqlite3_stmt **st);
/* Step a statement that returns no rows, then finalize it. */
int identity_run(const mdg_identity *id, sqlite3 *db, sqlite3_stmt *st, const char *what);
/* Roll back whatever transaction db has open, if any. */
void identity_rollback(sqlite3 *db);

/* identity_sqlite_changes.c: the changes of the ops table */
int sqlite_json_valid(mdg_identity *id, const char *json);
int sqlite_invite(mdg_identity *id, const char *hash, const char *email, int64_t now,
                  int64_t expires);
int sqlite_confirm(mdg_identity *id, const char *hash, const char *b64, int64_t now,
                   char email[MAX_EMAIL + 1]);
int sqlite_add_key(mdg_identity *id, bool node, const char *name, const char *b64,
                   const char *config, int64_t now);
int sqlite_revoke(mdg_identity *id, const char *b64, int64_t now);

#endif
