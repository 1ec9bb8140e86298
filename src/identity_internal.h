/* identity_internal.h - what the identity store's files share (not
 * installed): the store's handle and the SQLite helpers both use.
 *
 *   identity.c           the store: the database opened (schema,
 *                        migrations, its reader and writer connections)
 *                        and read (the ZAP lookup, listing, the
 *                        revocation log a broker polls)
 *   identity_changes.c   every change, one write transaction each:
 *                        invitations, confirmation, adding keys, revoking
 *
 * A handle is shared by threads: rd_lock guards the reader (and
 * role_stmt), wr_lock the writer. */
#ifndef MDG_IDENTITY_INTERNAL_H
#define MDG_IDENTITY_INTERNAL_H

#include "internal.h"
#include "messidge_identity.h"

#include <limits.h>
#include <pthread.h>
#include <stdint.h>

#include <sqlite3.h>

#define HASH_BYTES 32
#define HASH_B64_LEN 43 /* unpadded URL-safe base64 of HASH_BYTES */

struct mdg_identity {
    sqlite3 *rd, *wr;
    pthread_mutex_t rd_lock, wr_lock;
    sqlite3_stmt *role_stmt; /* cached: the ZAP handler's lookup */
    char path[PATH_MAX];     /* the database file, for messages */
    int64_t revoke_cursor;   /* mdg_identity_attach: revocations seen */
};

/* identity.c: helpers for both files */
int64_t identity_now(void);
/* Fail with SQLite's message for db, naming the database file. */
int identity_db_fail(const mdg_identity *id, sqlite3 *db, const char *what);
/* Run SQL without results (may hold several statements). */
int identity_exec(const mdg_identity *id, sqlite3 *db, const char *sql, const char *what);
int identity_prepare(const mdg_identity *id, sqlite3 *db, const char *sql, sqlite3_stmt **st);
/* Step a statement that returns no rows, then finalize it. */
int identity_run(const mdg_identity *id, sqlite3 *db, sqlite3_stmt *st, const char *what);
/* Roll back whatever transaction db has open, if any. */
void identity_rollback(sqlite3 *db);
/* The stored form of a token: unpadded URL-safe base64 of its BLAKE2b. */
void identity_token_hash(const char *token, size_t len, char out[HASH_B64_LEN + 1]);

#endif
