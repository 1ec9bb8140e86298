/* identity_pg_changes.c - every change to the PostgreSQL identity store,
 * each one transaction on the writer (READ COMMITTED, PostgreSQL's
 * default). What SQLite gets from its single writer lock is taken here
 * with locks as narrow as the change:
 *
 *   - registering a key (confirm, add) holds a transaction-scoped advisory
 *     lock on that key, so two registrations of one key, as a user and as
 *     a node at once, cannot both pass the "already registered" check;
 *   - confirming locks the invitation's row (SELECT ... FOR UPDATE): of
 *     concurrent confirms with one token the first wins and the others,
 *     once it commits, find the invitation gone and its user made;
 *   - revoking locks the revocation log (EXCLUSIVE: readers go on), so
 *     the log's numbers are given in commit order and a broker reading it
 *     by cursor never passes a number whose row is not committed yet; the
 *     NOTIFY to listening brokers is sent in the same transaction, so it
 *     is delivered when, and only if, the revocation commits.
 *
 * The input is checked and the outcomes worded by the front (identity.c). */
#include "identity_pg.h"

#include <string.h>

#define SQLSTATE_UNIQUE_VIOLATION "23505"
#define SQLSTATE_INVALID_TEXT "22P02"

/* Begin a transaction on the writer, holding its mutex until finish(). */
static int begin(mdg_identity *id)
{
    pthread_mutex_lock(&pg_of(id)->wr_lock);
    int rc = pg_run(id, pg_of(id)->wr, "BEGIN", 0, NULL, "cannot begin a transaction", true, NULL);
    if (rc)
        pthread_mutex_unlock(&pg_of(id)->wr_lock);
    return rc;
}

/* Commit when rc is 0, else roll back; then release the writer. */
static int finish(mdg_identity *id, int rc)
{
    PGconn *c = pg_of(id)->wr;
    if (rc == 0)
        rc = pg_run(id, c, "COMMIT", 0, NULL, "cannot commit", false, NULL);
    else
        PQclear(PQexec(c, "ROLLBACK"));
    pthread_mutex_unlock(&pg_of(id)->wr_lock);
    return rc;
}

/* Run a statement on the writer; 0 or < 0. */
static int run(mdg_identity *id, const char *sql, int n, const char *const *p, const char *what)
{
    return pg_run(id, pg_of(id)->wr, sql, n, p, what, false, NULL);
}

/* Rows of a query on the writer: >= 0, or < 0. */
static int count(mdg_identity *id, const char *sql, int n, const char *const *p, const char *what)
{
    PGresult *r;
    int rc = pg_run(id, pg_of(id)->wr, sql, n, p, what, false, &r);
    if (rc == 0)
        rc = PQntuples(r);
    PQclear(r);
    return rc;
}

/* Whether b64 is registered as a user or node (revoked or not): 1 yes,
 * 0 no, < 0 error. */
static int key_registered(mdg_identity *id, const char *b64)
{
    const char *p[] = {b64};
    int rc = count(id, "SELECT 1 FROM users WHERE pk = $1 UNION ALL SELECT 1 FROM nodes WHERE pk = $1",
                   1, p, "cannot look up a key");
    return rc > 0 ? 1 : rc;
}

/* Hold the key until the transaction ends; then key_registered. */
static int lock_key(mdg_identity *id, const char *b64)
{
    const char *p[] = {b64};
    int rc = run(id, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", 1, p,
                 "cannot lock a key");
    return rc ? rc : key_registered(id, b64);
}

/* An INSERT of a key: a unique violation is a key registered meanwhile. */
static int insert_key(mdg_identity *id, const char *sql, int n, const char *const *p,
                      const char *what)
{
    PGresult *r;
    int rc = pg_run(id, pg_of(id)->wr, sql, n, p, what, false, &r);
    if (rc && pg_sqlstate_is(r, SQLSTATE_UNIQUE_VIOLATION))
        rc = ID_KEY_TAKEN;
    PQclear(r);
    return rc;
}

int pg_json_valid(mdg_identity *id, const char *json)
{
    pg_store *s = pg_of(id);
    const char *p[] = {json};
    PGresult *r;
    pthread_mutex_lock(&s->rd_lock);
    int rc = pg_run(id, s->rd, "SELECT $1::json", 1, p, "cannot check JSON", true, &r);
    rc = rc == 0 ? 1 : pg_sqlstate_is(r, SQLSTATE_INVALID_TEXT) ? 0 : rc;
    PQclear(r);
    pthread_mutex_unlock(&s->rd_lock);
    return rc;
}

int pg_invite(mdg_identity *id, const char *hash, const char *email, int64_t now, int64_t expires)
{
    char created[24], until[24];
    snprintf(created, sizeof created, "%lld", (long long)now);
    snprintf(until, sizeof until, "%lld", (long long)expires);
    const char *p[] = {hash, email, created, until};
    int rc = begin(id);
    if (rc)
        return rc;
    return finish(id, run(id,
                          "INSERT INTO pending (token_hash, email, created, expires) "
                          "VALUES ($1, $2, $3, $4)",
                          4, p, "cannot store the invitation"));
}

/* The body of pg_confirm, inside the transaction. */
static int confirm_locked(mdg_identity *id, const char *hash, const char *b64, int64_t now,
                          char email[MAX_EMAIL + 1])
{
    const char *ph[] = {hash};
    char created[24];
    PGresult *r;
    int64_t expires;
    int rc;

    if ((rc = lock_key(id, b64)) < 0)
        return rc;
    bool taken = rc == 1;
    /* The row lock: a concurrent confirm of this token waits here. */
    if ((rc = pg_run(id, pg_of(id)->wr,
                     "SELECT email, expires FROM pending WHERE token_hash = $1 FOR UPDATE", 1, ph,
                     "cannot look up the invitation", false, &r)) != 0) {
        PQclear(r);
        return rc;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        /* Not pending: used already, or never issued. */
        rc = count(id, "SELECT 1 FROM users WHERE token_hash = $1", 1, ph,
                   "cannot look up the invitation");
        return rc < 0 ? rc : rc > 0 ? ID_TOKEN_USED : ID_UNKNOWN_TOKEN;
    }
    snprintf(email, MAX_EMAIL + 1, "%s", PQgetvalue(r, 0, 0));
    expires = pg_get_int64(r, 0, 1);
    PQclear(r);
    if (now >= expires)
        return ID_EXPIRED;
    if (taken)
        return ID_KEY_TAKEN;

    snprintf(created, sizeof created, "%lld", (long long)now);
    const char *p[] = {b64, email, created, hash};
    if ((rc = insert_key(id,
                         "INSERT INTO users (pk, email, config, created, token_hash) "
                         "VALUES ($1, $2, '{}', $3, $4)",
                         4, p, "cannot store the user")) != 0)
        return rc;
    return run(id, "DELETE FROM pending WHERE token_hash = $1", 1, ph,
               "cannot delete the invitation");
}

int pg_confirm(mdg_identity *id, const char *hash, const char *b64, int64_t now,
               char email[MAX_EMAIL + 1])
{
    int rc = begin(id);
    if (rc)
        return rc;
    return finish(id, confirm_locked(id, hash, b64, now, email));
}

int pg_add_key(mdg_identity *id, bool node, const char *name, const char *b64, const char *config,
               int64_t now)
{
    char created[24];
    snprintf(created, sizeof created, "%lld", (long long)now);
    const char *p[] = {b64, name, config, created};
    int rc = begin(id);
    if (rc)
        return rc;
    if ((rc = lock_key(id, b64)) != 0)
        return finish(id, rc < 0 ? rc : ID_KEY_TAKEN);
    return finish(id, insert_key(id,
                                 node ? "INSERT INTO nodes (pk, name, config, created) "
                                        "VALUES ($1, $2, $3, $4)"
                                      : "INSERT INTO users (pk, email, config, created) "
                                        "VALUES ($1, $2, $3, $4)",
                                 4, p, node ? "cannot store the node" : "cannot store the user"));
}

/* The body of pg_revoke, inside the transaction. */
static int revoke_locked(mdg_identity *id, const char *b64, int64_t now)
{
    char at[24];
    PGresult *r;
    int rc;

    snprintf(at, sizeof at, "%lld", (long long)now);
    const char *p[] = {at, b64};
    if ((rc = run(id, "LOCK TABLE revocations IN EXCLUSIVE MODE", 0, NULL,
                  "cannot lock the revocation log")) != 0)
        return rc;
    rc = count(id, "UPDATE users SET revoked = $1 WHERE pk = $2 AND revoked IS NULL RETURNING 1",
               2, p, "cannot revoke");
    if (rc == 0)
        rc = count(id,
                   "UPDATE nodes SET revoked = $1 WHERE pk = $2 AND revoked IS NULL RETURNING 1",
                   2, p, "cannot revoke");
    if (rc < 0)
        return rc;
    if (rc == 0) {
        rc = key_registered(id, b64);
        return rc < 0 ? rc : rc > 0 ? ID_ALREADY_REVOKED : ID_NOT_FOUND;
    }
    const char *log[] = {b64, at};
    if ((rc = pg_run(id, pg_of(id)->wr,
                     "INSERT INTO revocations (pk, at) VALUES ($1, $2) RETURNING seq::text", 2, log,
                     "cannot log the revocation", false, &r)) == 0) {
        const char *seq[] = {PQgetvalue(r, 0, 0)};
        rc = run(id, "SELECT pg_notify('" PG_CHANNEL "', $1)", 1, seq,
                 "cannot tell the brokers of the revocation");
    }
    PQclear(r);
    return rc;
}

int pg_revoke(mdg_identity *id, const char *b64, int64_t now)
{
    int rc = begin(id);
    if (rc)
        return rc;
    return finish(id, revoke_locked(id, b64, now));
}
