/* identity_changes.c - every change to the identity store, each one
 * transaction on the writer begun with BEGIN IMMEDIATE (see identity.c):
 * invitations (only a hash of each token is stored), their confirmation
 * by a new user's key, users and nodes added directly, and revocation,
 * which also appends to the log that live brokers poll. */
#include "identity_internal.h"

#include <string.h>

#include <sodium.h>

/* Token text accepted at confirm: ours are MDG_TOKEN_LEN chars; migrated
 * Messidge 1.x tokens (shortuuid) are 22. */
#define TOKEN_MIN 16
#define TOKEN_MAX 64
#define MAX_EMAIL 320
#define MAX_NODE_NAME 256
#define MAX_TTL ((int64_t)100 * 365 * 24 * 3600)

/* ------------------------------------------------------------------ checks */

/* A token is URL-safe base64 text of a sane length. */
static int check_token(const char *token)
{
    size_t n = token ? strlen(token) : 0;
    if (n < TOKEN_MIN || n > TOKEN_MAX)
        return mdg_fail(MDG_EINVAL, "malformed token: expected %d to %d characters, got %zu",
                        TOKEN_MIN, TOKEN_MAX, n);
    for (size_t i = 0; i < n; i++) {
        char c = token[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return mdg_fail(MDG_EINVAL, "malformed token: character %zu is not URL-safe base64",
                            i + 1);
    }
    return 0;
}

/* Text fields: bounded, no control characters; spaces only where allowed. */
static int check_text(const char *s, size_t max, bool spaces, bool empty_ok, const char *what)
{
    size_t n = s ? strlen(s) : 0;
    if (!s || (n == 0 && !empty_ok))
        return mdg_fail(MDG_EINVAL, "%s is empty", what);
    if (n > max)
        return mdg_fail(MDG_EINVAL, "%s is longer than %zu bytes", what, max);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < ' ' || c == 0x7f || (c == ' ' && !spaces))
            return mdg_fail(MDG_EINVAL, "%s \"%.64s\" contains %s", what, s,
                            c == ' ' ? "a space" : "a control character");
    }
    return 0;
}

/* --------------------------------------------------------------- changes */

static int begin(mdg_identity *id)
{
    pthread_mutex_lock(&id->wr_lock);
    if (sqlite3_exec(id->wr, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        int rc = identity_db_fail(id, id->wr, "cannot begin a transaction");
        pthread_mutex_unlock(&id->wr_lock);
        return rc;
    }
    return 0;
}

/* Commit when rc is 0, else roll back; then release the writer. */
static int finish(mdg_identity *id, int rc)
{
    if (rc == 0 && sqlite3_exec(id->wr, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = identity_db_fail(id, id->wr, "cannot commit");
    if (rc != 0)
        identity_rollback(id->wr);
    pthread_mutex_unlock(&id->wr_lock);
    return rc;
}

/* Whether b64 is registered as a user or node (revoked or not). Within a
 * transaction on the writer. 1 yes, 0 no, < 0 error. */
static int key_registered(mdg_identity *id, const char *b64)
{
    sqlite3_stmt *st;
    int rc = identity_prepare(
        id, id->wr, "SELECT 1 FROM users WHERE pk = ?1 UNION ALL SELECT 1 FROM nodes WHERE pk = ?1",
        &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, b64, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    rc = rc == SQLITE_ROW    ? 1
         : rc == SQLITE_DONE ? 0
                             : identity_db_fail(id, id->wr, "cannot look up a key");
    sqlite3_finalize(st);
    return rc;
}

int mdg_identity_invite(mdg_identity *id, const char *email, int64_t ttl_seconds, char *token,
                        size_t token_len)
{
    uint8_t raw[MDG_TOKEN_BYTES];
    char text[MDG_TOKEN_LEN + 1], hash[HASH_B64_LEN + 1];
    sqlite3_stmt *st;
    int64_t now = identity_now();
    int rc;

    _Static_assert(sodium_base64_ENCODED_LEN(MDG_TOKEN_BYTES,
                                             sodium_base64_VARIANT_URLSAFE_NO_PADDING) ==
                       MDG_TOKEN_LEN + 1,
                   "token length");
    if (!id || !token)
        return mdg_fail(MDG_EINVAL, "mdg_identity_invite: NULL argument");
    if (token_len < MDG_TOKEN_LEN + 1)
        return mdg_fail(MDG_EINVAL, "token buffer of %zu bytes is too small (need %d)",
                        token_len, MDG_TOKEN_LEN + 1);
    token[0] = '\0';
    if ((rc = check_text(email, MAX_EMAIL, false, false, "email")) != 0)
        return rc;
    if (ttl_seconds <= 0)
        ttl_seconds = MDG_INVITE_DEFAULT_TTL;
    if (ttl_seconds > MAX_TTL)
        return mdg_fail(MDG_EINVAL, "invitation lifetime of %lld s is too long",
                        (long long)ttl_seconds);

    /* A token that starts with '-' reads as an option on command lines:
     * draw again (this costs 1/64 of the token space, nothing). */
    do {
        randombytes_buf(raw, sizeof raw);
        sodium_bin2base64(text, sizeof text, raw, sizeof raw,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    } while (text[0] == '-');
    identity_token_hash(text, MDG_TOKEN_LEN, hash);

    if ((rc = begin(id)) != 0)
        return rc;
    if ((rc = identity_prepare(id, id->wr,
                               "INSERT INTO pending (token_hash, email, created, expires) "
                               "VALUES (?, ?, ?, ?)",
                               &st)) == 0) {
        sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, email, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, now);
        sqlite3_bind_int64(st, 4, now + ttl_seconds);
        rc = identity_run(id, id->wr, st, "cannot store the invitation");
    }
    if ((rc = finish(id, rc)) == 0) {
        memcpy(token, text, MDG_TOKEN_LEN + 1);
        mdg_log(MDG_LOG_INFO, "invited %s (invitation %.8s, expires in %lld s)", email, hash,
                (long long)ttl_seconds);
    }
    sodium_memzero(text, sizeof text);
    sodium_memzero(raw, sizeof raw);
    return rc;
}

/* The body of mdg_identity_confirm, inside the transaction. */
static int confirm_locked(mdg_identity *id, const char *hash, const char *b64)
{
    sqlite3_stmt *st;
    char email[MAX_EMAIL + 1];
    int64_t expires = 0, now = identity_now();
    int rc;

    if ((rc = identity_prepare(
             id, id->wr, "SELECT email, expires FROM pending WHERE token_hash = ?", &st)) != 0)
        return rc;
    sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *e = (const char *)sqlite3_column_text(st, 0);
        snprintf(email, sizeof email, "%s", e ? e : "");
        expires = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return identity_db_fail(id, id->wr, "cannot look up the invitation");

    if (rc == SQLITE_DONE) {
        /* Not pending: used already, or never issued. */
        if ((rc = identity_prepare(id, id->wr, "SELECT 1 FROM users WHERE token_hash = ?",
                                   &st)) != 0)
            return rc;
        sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        sqlite3_finalize(st);
        if (rc == SQLITE_ROW)
            return mdg_fail(MDG_ESTATE, "this token has already been used");
        if (rc != SQLITE_DONE)
            return identity_db_fail(id, id->wr, "cannot look up the invitation");
        return mdg_fail(MDG_ENOTFOUND, "unknown token");
    }
    if (now >= expires)
        return mdg_fail(MDG_ETIMEDOUT, "this invitation has expired");

    if ((rc = key_registered(id, b64)) != 0)
        return rc < 0 ? rc : mdg_fail(MDG_ESTATE, "this public key is already registered");

    if ((rc = identity_prepare(id, id->wr,
                               "INSERT INTO users (pk, email, config, created, token_hash) "
                               "VALUES (?, ?, '{}', ?, ?)",
                               &st)) != 0)
        return rc;
    sqlite3_bind_text(st, 1, b64, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, email, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now);
    sqlite3_bind_text(st, 4, hash, -1, SQLITE_STATIC);
    if ((rc = identity_run(id, id->wr, st, "cannot store the user")) != 0)
        return rc;

    if ((rc = identity_prepare(id, id->wr, "DELETE FROM pending WHERE token_hash = ?", &st)) != 0)
        return rc;
    sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
    if ((rc = identity_run(id, id->wr, st, "cannot delete the invitation")) != 0)
        return rc;
    mdg_log(MDG_LOG_INFO, "confirmed %s as user %.12s (invitation %.8s)", email, b64, hash);
    return 0;
}

int mdg_identity_confirm(mdg_identity *id, const char *token, const uint8_t pk[MDG_KEY_BYTES])
{
    char b64[MDG_KEY_B64_LEN + 1], hash[HASH_B64_LEN + 1];
    int rc;

    if (!id || !pk)
        return mdg_fail(MDG_EINVAL, "mdg_identity_confirm: NULL argument");
    if ((rc = check_token(token)) != 0)
        return rc;
    if (sodium_is_zero(pk, MDG_KEY_BYTES))
        return mdg_fail(MDG_EINVAL, "the public key is all zeros");
    mdg_pk_to_b64(pk, b64);
    identity_token_hash(token, strlen(token), hash);
    if ((rc = begin(id)) != 0)
        return rc;
    return finish(id, confirm_locked(id, hash, b64));
}

/* Insert a user or node directly. */
static int add_key(mdg_identity *id, bool node, const char *name, const uint8_t pk[MDG_KEY_BYTES],
                   const char *config_json)
{
    char b64[MDG_KEY_B64_LEN + 1];
    sqlite3_stmt *st;
    int rc;

    if (!id || !pk)
        return mdg_fail(MDG_EINVAL, "mdg_identity_add_%s: NULL argument", node ? "node" : "user");
    if (node ? (rc = check_text(name ? name : "", MAX_NODE_NAME, true, true, "node name")) != 0
             : (rc = check_text(name, MAX_EMAIL, false, false, "email")) != 0)
        return rc;
    if (sodium_is_zero(pk, MDG_KEY_BYTES))
        return mdg_fail(MDG_EINVAL, "the public key is all zeros");
    if (!config_json)
        config_json = "{}";
    mdg_pk_to_b64(pk, b64);

    if ((rc = begin(id)) != 0)
        return rc;
    if ((rc = key_registered(id, b64)) != 0) {
        rc = rc < 0 ? rc : mdg_fail(MDG_ESTATE, "key %s is already registered", b64);
        return finish(id, rc);
    }
    /* json_valid() first, for a clear message rather than a CHECK failure. */
    if ((rc = identity_prepare(id, id->wr, "SELECT json_valid(?)", &st)) != 0)
        return finish(id, rc);
    sqlite3_bind_text(st, 1, config_json, -1, SQLITE_STATIC);
    rc = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == 1
             ? 0
             : mdg_fail(MDG_EINVAL, "config is not valid JSON: %.64s", config_json);
    sqlite3_finalize(st);
    if (rc)
        return finish(id, rc);

    if ((rc = identity_prepare(
             id, id->wr,
             node ? "INSERT INTO nodes (pk, name, config, created) VALUES (?, ?, ?, ?)"
                  : "INSERT INTO users (pk, email, config, created) VALUES (?, ?, ?, ?)",
             &st)) != 0)
        return finish(id, rc);
    sqlite3_bind_text(st, 1, b64, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name ? name : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, config_json, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, identity_now());
    rc = finish(
        id, identity_run(id, id->wr, st, node ? "cannot store the node" : "cannot store the user"));
    if (rc == 0)
        mdg_log(MDG_LOG_INFO, "registered %s %s as %.12s", node ? "node" : "user",
                name ? name : "", b64);
    return rc;
}

int mdg_identity_add_node(mdg_identity *id, const char *name, const uint8_t pk[MDG_KEY_BYTES],
                          const char *config_json)
{
    return add_key(id, true, name, pk, config_json);
}

int mdg_identity_add_user(mdg_identity *id, const char *email, const uint8_t pk[MDG_KEY_BYTES],
                          const char *config_json)
{
    return add_key(id, false, email, pk, config_json);
}

/* UPDATE table SET revoked = now for a live key: rows changed or < 0. */
static int revoke_in(mdg_identity *id, const char *sql, const char *b64, int64_t now)
{
    sqlite3_stmt *st;
    int rc = identity_prepare(id, id->wr, sql, &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_text(st, 2, b64, -1, SQLITE_STATIC);
    if ((rc = identity_run(id, id->wr, st, "cannot revoke")) != 0)
        return rc;
    return sqlite3_changes(id->wr);
}

static int revoke_locked(mdg_identity *id, const char *b64)
{
    sqlite3_stmt *st;
    int64_t now = identity_now();
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
        return rc ? mdg_fail(MDG_ESTATE, "key %s was already revoked", b64)
                  : mdg_fail(MDG_ENOTFOUND, "key %s is neither a user nor a node", b64);
    }
    if ((rc = identity_prepare(id, id->wr, "INSERT INTO revocations (pk, at) VALUES (?, ?)",
                               &st)) != 0)
        return rc;
    sqlite3_bind_text(st, 1, b64, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    return identity_run(id, id->wr, st, "cannot log the revocation");
}

int mdg_identity_revoke(mdg_identity *id, const uint8_t pk[MDG_KEY_BYTES])
{
    char b64[MDG_KEY_B64_LEN + 1];
    int rc;

    if (!id || !pk)
        return mdg_fail(MDG_EINVAL, "mdg_identity_revoke: NULL argument");
    mdg_pk_to_b64(pk, b64);
    if ((rc = begin(id)) != 0)
        return rc;
    rc = finish(id, revoke_locked(id, b64));
    if (rc == 0)
        mdg_log(MDG_LOG_INFO, "revoked key %.12s", b64);
    return rc;
}
