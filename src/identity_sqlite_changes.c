/* identity_sqlite_changes.c - every change to the SQLite identity store,
 * each one transaction on the writer begun with BEGIN IMMEDIATE (see
 * identity_sqlite.c), which takes SQLite's write lock up front: a
 * check-then-write cannot interleave with another writer, in this process
 * or another. Invitations (only a hash of each token is stored), their
 * confirmation by a new user's key, users and nodes added directly, and
 * revocation, which also appends to the log that live brokers poll. The
 * input is checked and the outcomes worded by the front (identity.c). */
#include "identity_sqlite.h"

#include <string.h>

/* --------------------------------------------------------------- changes */

static int begin(mdg_identity *id)
{
    sqlite_store *s = sqlite_of(id);
    pthread_mutex_lock(&s->wr_lock);
    if (sqlite3_exec(s->wr, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        int rc = identity_db_fail(id, s->wr, "cannot begin a transaction");
        pthread_mutex_unlock(&s->wr_lock);
        return rc;
    }
    return 0;
}

/* Commit when rc is 0, else roll back; then release the writer. */
static int finish(mdg_identity *id, int rc)
{
    sqlite_store *s = sqlite_of(id);
    if (rc == 0 && sqlite3_exec(s->wr, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = identity_db_fail(id, s->wr, "cannot commit");
    if (rc != 0)
        identity_rollback(s->wr);
    pthread_mutex_unlock(&s->wr_lock);
    return rc;
}

/* Whether b64 is registered as a user or node (revoked or not). Within a
 * transaction on the writer. 1 yes, 0 no, < 0 error. */
static int key_registered(mdg_identity *id, const char *b64)
{
    sqlite_store *s = sqlite_of(id);
    sqlite3_stmt *st;
    int rc = identity_prepare(
        id, s->wr, "SELECT 1 FROM users WHERE pk = ?1 UNION ALL SELECT 1 FROM nodes WHERE pk = ?1",
        &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, b64, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    rc = rc == SQLITE_ROW    ? 1
         : rc == SQLITE_DONE ? 0
                             : identity_db_fail(id, s->wr, "cannot look up a key");
    sqlite3_finalize(st);
    return rc;
}

int sqlite_invite(mdg_identity *id, const char *hash, const char *email, int64_t now,
                  int64_t expires)
{
    sqlite_store *s = sqlite_of(id);
    sqlite3_stmt *st;
    int rc;

    if ((rc = begin(id)) != 0)
        return rc;
    if ((rc = identity_prepare(id, s->wr,
                               "INSERT INTO pending (token_hash, email, created, expires) "
                               "VALUES (?, ?, ?, ?)",
                               &st)) == 0) {
        sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, email, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, now);
        sqlite3_bind_int64(st, 4, expires);
        rc = identity_run(id, s->wr, st, "cannot store the invitation");
    }
    return finish(id, rc);
}

/* The body of sqlite_confirm, inside the transaction. */
static int confirm_locked(mdg_identity *id, const char *hash, const char *b64, int64_t now,
                          char email[MAX_EMAIL + 1])
{
    sqlite3 *db = sqlite_of(id)->wr;
    sqlite3_stmt *st;
    int64_t expires = 0;
    int rc;

    if ((rc = identity_prepare(id, db, "SELECT email, expires FROM pending WHERE token_hash = ?",
                               &st)) != 0)
        return rc;
    sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *e = (const char *)sqlite3_column_text(st, 0);
        snprintf(email, MAX_EMAIL + 1, "%s", e ? e : "");
        expires = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return identity_db_fail(id, db, "cannot look up the invitation");

    if (rc == SQLITE_DONE) {
        /* Not pending: used already, or never issued. */
        if ((rc = identity_prepare(id, db, "SELECT 1 FROM users WHERE token_hash = ?", &st)) != 0)
            return rc;
        sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        sqlite3_finalize(st);
        if (rc == SQLITE_ROW)
            return ID_TOKEN_USED;
        if (rc != SQLITE_DONE)
            return identity_db_fail(id, db, "cannot look up the invitation");
        return ID_UNKNOWN_TOKEN;
    }
    if (now >= expires)
        return ID_EXPIRED;

    if ((rc = key_registered(id, b64)) != 0)
        return rc < 0 ? rc : ID_KEY_TAKEN;

    if ((rc = identity_prepare(id, db,
                               "INSERT INTO users (pk, email, config, created, token_hash) "
                               "VALUES (?, ?, '{}', ?, ?)",
                               &st)) != 0)
        return rc;
    sqlite3_bind_text(st, 1, b64, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, email, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now);
    sqlite3_bind_text(st, 4, hash, -1, SQLITE_STATIC);
    if ((rc = identity_run(id, db, st, "cannot store the user")) != 0)
        return rc;

    if ((rc = identity_prepare(id, db, "DELETE FROM pending WHERE token_hash = ?", &st)) != 0)
        return rc;
    sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
    return identity_run(id, db, st, "cannot delete the invitation");
}

int sqlite_confirm(mdg_identity *id, const char *hash, const char *b64, int64_t now,
                   char email[MAX_EMAIL + 1])
{
    int rc;
    if ((rc = begin(id)) != 0)
        return rc;
    return finish(id, confirm_locked(id, hash, b64, now, email));
}

int sqlite_json_valid(mdg_identity *id, const char *json)
{
    sqlite_store *s = sqlite_of(id);
    sqlite3_stmt *st;
    int rc;

    pthread_mutex_lock(&s->rd_lock);
    if ((rc = identity_prepare(id, s->rd, "SELECT json_valid(?)", &st)) == 0) {
        sqlite3_bind_text(st, 1, json, -1, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) == 1
                                            : identity_db_fail(id, s->rd, "cannot check JSON");
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->rd_lock);
    return rc;
}

int sqlite_add_key(mdg_identity *id, bool node, const char *name, const char *b64,
                   const char *config, int64_t now)
{
    sqlite3 *db = sqlite_of(id)->wr;
    sqlite3_stmt *st;
    int rc;

    if ((rc = begin(id)) != 0)
        return rc;
    if ((rc = key_registered(id, b64)) != 0)
        return finish(id, rc < 0 ? rc : ID_KEY_TAKEN);
    if ((rc = identity_prepare(
             id, db,
             node ? "INSERT INTO nodes (pk, name, config, created) VALUES (?, ?, ?, ?)"
                  : "INSERT INTO users (pk, email, config, created) VALUES (?, ?, ?, ?)",
             &st)) != 0)
        return finish(id, rc);
    sqlite3_bind_text(st, 1, b64, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, config, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, now);
    return finish(
        id, identity_run(id, db, st, node ? "cannot store the node" : "cannot store the user"));
}

/* UPDATE table SET revoked = now for a live key: rows changed or < 0. */
static int revoke_in(mdg_identity *id, const char *sql, const char *b64, int64_t now)
{
    sqlite3 *db = sqlite_of(id)->wr;
    sqlite3_stmt *st;
    int rc = identity_prepare(id, db, sql, &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_text(st, 2, b64, -1, SQLITE_STATIC);
    if ((rc = identity_run(id, db, st, "cannot revoke")) != 0)
        return rc;
    return sqlite3_changes(db);
}

static int revoke_locked(mdg_identity *id, const char *b64, int64_t now)
{
    sqlite_store *s = sqlite_of(id);
    sqlite3_stmt *st;
    int rc;

    rc = revoke_in(id, "UPDATE users SET revoked = ? WHERE pk = ? AND revoked IS NULL", b64, now);
    if (rc == 0)
        rc = revoke_in(id, "UPDATE nodes SET revoked = ? WHERE pk = ? AND revoked IS NULL", b64,
                       now);
    if (rc < 0)
        return rc;
    if (rc == 0) {
        if ((rc = key_registered(id, b64)) < 0)
            return rc;
        return rc ? ID_ALREADY_REVOKED : ID_NOT_FOUND;
    }
    if ((rc = identity_prepare(id, s->wr,
                               "INSERT INTO revocations (pk, at) VALUES (?, ?)", &st)) != 0)
        return rc;
    sqlite3_bind_text(st, 1, b64, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    return identity_run(id, s->wr, st, "cannot log the revocation");
}

int sqlite_revoke(mdg_identity *id, const char *b64, int64_t now)
{
    int rc;
    if ((rc = begin(id)) != 0)
        return rc;
    return finish(id, revoke_locked(id, b64, now));
}
