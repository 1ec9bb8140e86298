/* identity.c - the identity store's front: the public API of
 * messidge_identity.h over two backends, SQLite in a state directory
 * (identity_sqlite*.c) and PostgreSQL by connection URI (identity_pg*.c).
 *
 * Everything both share lives here, once: the checks of what callers pass
 * (emails, node names, tokens, keys, JSON configs), making tokens and
 * hashing them (only hashes are stored), the error texts of every outcome
 * (the backends answer an identity_outcome and this file words it), the
 * logging of changes, and attaching a store to a broker. */
#include "identity_internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

/* Token text accepted at confirm: ours are MDG_TOKEN_LEN chars; migrated
 * Messidge 1.x tokens (shortuuid) are 22. */
#define TOKEN_MIN 16
#define TOKEN_MAX 64
#define MAX_TTL ((int64_t)100 * 365 * 24 * 3600)

int64_t identity_now(void)
{
    return (int64_t)time(NULL);
}

void identity_token_hash(const char *token, size_t len, char out[HASH_B64_LEN + 1])
{
    uint8_t h[HASH_BYTES];
    crypto_generichash(h, sizeof h, (const unsigned char *)token, len, NULL, 0);
    sodium_bin2base64(out, HASH_B64_LEN + 1, h, sizeof h,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

int identity_rows_push(identity_revocation **rows, size_t *n, size_t *cap, int64_t seq,
                       const char *pk_b64)
{
    uint8_t pk[MDG_KEY_BYTES];
    /* A row edited by hand names no key: kept, all zeros (a key that is
     * never registered), so that the cursor passes it. */
    if (!pk_b64 || mdg_pk_from_b64(pk, pk_b64) != 0)
        memset(pk, 0, sizeof pk);
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        identity_revocation *grown = realloc(*rows, c * sizeof **rows);
        if (!grown)
            return mdg_fail_plain(MDG_ENOMEM);
        *rows = grown;
        *cap = c;
    }
    (*rows)[*n].seq = seq;
    memcpy((*rows)[*n].pk, pk, MDG_KEY_BYTES);
    (*n)++;
    return 0;
}

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

/* A key to register: not all zeros. */
static int check_key(const uint8_t pk[MDG_KEY_BYTES])
{
    if (sodium_is_zero(pk, MDG_KEY_BYTES))
        return mdg_fail(MDG_EINVAL, "the public key is all zeros");
    return 0;
}

/* ---------------------------------------------------------------- opening */

/* libpq's URI schemes; anything else is a state directory. */
static bool is_pg_uri(const char *location)
{
    return strncmp(location, "postgresql://", 13) == 0 || strncmp(location, "postgres://", 11) == 0;
}

int mdg_identity_open_ex(mdg_identity **out, const char *location, unsigned flags)
{
    mdg_identity *id;
    int rc;

    if (!out)
        return mdg_fail(MDG_EINVAL, "mdg_identity_open: out is NULL");
    *out = NULL;
    if (!location)
        location = MDG_DEFAULT_STATE_DIR;
    if (!*location)
        return mdg_fail(MDG_EINVAL, "state directory is empty");
    if (flags & ~(unsigned)MDG_IDENTITY_CREATE)
        return mdg_fail(MDG_EINVAL, "unknown mdg_identity_open flags 0x%x", flags);
    if (sodium_init() < 0)
        return mdg_fail(MDG_ESYS, "libsodium initialisation failed");
    id = calloc(1, sizeof *id);
    if (!id)
        return mdg_fail_plain(MDG_ENOMEM);
    rc = is_pg_uri(location) ? identity_pg_open(id, location, flags)
                             : identity_sqlite_open(id, location, flags);
    if (rc) {
        mdg_identity_destroy(&id);
        return rc;
    }
    *out = id;
    return 0;
}

int mdg_identity_open(mdg_identity **out, const char *location)
{
    return mdg_identity_open_ex(out, location, MDG_IDENTITY_CREATE);
}

void mdg_identity_destroy(mdg_identity **idp)
{
    if (!idp || !*idp)
        return;
    if ((*idp)->ops)
        (*idp)->ops->close(*idp);
    free(*idp);
    *idp = NULL;
}

/* ---------------------------------------------------------------- lookups */

int mdg_identity_role(mdg_identity *id, const uint8_t pk[MDG_KEY_BYTES], char **config_json)
{
    char b64[MDG_KEY_B64_LEN + 1];
    if (config_json)
        *config_json = NULL;
    if (!id || !pk)
        return mdg_fail(MDG_EINVAL, "mdg_identity_role: NULL argument");
    mdg_pk_to_b64(pk, b64);
    return id->ops->role(id, b64, config_json);
}

int mdg_identity_auth(const uint8_t pk[MDG_KEY_BYTES], void *identity)
{
    int role = mdg_identity_role(identity, pk, NULL);
    if (role < 0) {
        mdg_log(MDG_LOG_ERROR, "refusing a key: %s", mdg_last_error());
        return MDG_ROLE_NONE;
    }
    return role;
}

int mdg_identity_revoked_since(mdg_identity *id, int64_t *cursor,
                               void (*fn)(const uint8_t pk[MDG_KEY_BYTES], void *arg),
                               void *arg)
{
    identity_revocation *rows = NULL;
    size_t n = 0;
    int rc;

    if (!id || !cursor)
        return mdg_fail(MDG_EINVAL, "mdg_identity_revoked_since: NULL argument");
    if (!fn)
        return id->ops->last_revocation(id, cursor);
    if ((rc = id->ops->revocations(id, *cursor, &rows, &n)) != 0)
        return rc;
    /* The backend holds no lock now: fn may use the store. */
    for (size_t i = 0; i < n; i++) {
        if (!sodium_is_zero(rows[i].pk, MDG_KEY_BYTES))
            fn(rows[i].pk, arg);
        *cursor = rows[i].seq;
    }
    free(rows);
    return 0;
}

int mdg_identity_list(mdg_identity *id, int (*fn)(const mdg_identity_entry *e, void *arg),
                      void *arg)
{
    if (!id || !fn)
        return mdg_fail(MDG_EINVAL, "mdg_identity_list: NULL argument");
    return id->ops->list(id, fn, arg);
}

/* ---------------------------------------------------------------- changes */

int mdg_identity_invite(mdg_identity *id, const char *email, int64_t ttl_seconds, char *token,
                        size_t token_len)
{
    uint8_t raw[MDG_TOKEN_BYTES];
    char text[MDG_TOKEN_LEN + 1], hash[HASH_B64_LEN + 1];
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

    if ((rc = id->ops->invite(id, hash, email, now, now + ttl_seconds)) == 0) {
        memcpy(token, text, MDG_TOKEN_LEN + 1);
        mdg_log(MDG_LOG_INFO, "invited %s (invitation %.8s, expires in %lld s)", email, hash,
                (long long)ttl_seconds);
    }
    sodium_memzero(text, sizeof text);
    sodium_memzero(raw, sizeof raw);
    return rc;
}

int mdg_identity_confirm(mdg_identity *id, const char *token, const uint8_t pk[MDG_KEY_BYTES])
{
    char b64[MDG_KEY_B64_LEN + 1], hash[HASH_B64_LEN + 1], email[MAX_EMAIL + 1] = "";
    int rc;

    if (!id || !pk)
        return mdg_fail(MDG_EINVAL, "mdg_identity_confirm: NULL argument");
    if ((rc = check_token(token)) != 0 || (rc = check_key(pk)) != 0)
        return rc;
    mdg_pk_to_b64(pk, b64);
    identity_token_hash(token, strlen(token), hash);
    switch ((rc = id->ops->confirm(id, hash, b64, identity_now(), email))) {
    case 0:
        mdg_log(MDG_LOG_INFO, "confirmed %s as user %.12s (invitation %.8s)", email, b64, hash);
        return 0;
    case ID_UNKNOWN_TOKEN: return mdg_fail(MDG_ENOTFOUND, "unknown token");
    case ID_TOKEN_USED: return mdg_fail(MDG_ESTATE, "this token has already been used");
    case ID_EXPIRED: return mdg_fail(MDG_ETIMEDOUT, "this invitation has expired");
    case ID_KEY_TAKEN: return mdg_fail(MDG_ESTATE, "this public key is already registered");
    default: return rc < 0 ? rc : mdg_fail(MDG_EIO, "identity store: unexpected outcome %d", rc);
    }
}

/* Register a user or node directly. */
static int add_key(mdg_identity *id, bool node, const char *name, const uint8_t pk[MDG_KEY_BYTES],
                   const char *config_json)
{
    char b64[MDG_KEY_B64_LEN + 1];
    int rc;

    if (!id || !pk)
        return mdg_fail(MDG_EINVAL, "mdg_identity_add_%s: NULL argument", node ? "node" : "user");
    if (node ? (rc = check_text(name ? name : "", MAX_NODE_NAME, true, true, "node name")) != 0
             : (rc = check_text(name, MAX_EMAIL, false, false, "email")) != 0)
        return rc;
    if ((rc = check_key(pk)) != 0)
        return rc;
    if (!config_json)
        config_json = "{}";
    /* Each database's own JSON parser judges, so that what passes here is
     * what its column accepts. */
    if ((rc = id->ops->json_valid(id, config_json)) <= 0)
        return rc < 0 ? rc : mdg_fail(MDG_EINVAL, "config is not valid JSON: %.64s", config_json);
    mdg_pk_to_b64(pk, b64);
    rc = id->ops->add_key(id, node, name ? name : "", b64, config_json, identity_now());
    if (rc == ID_KEY_TAKEN)
        return mdg_fail(MDG_ESTATE, "key %s is already registered", b64);
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

int mdg_identity_revoke(mdg_identity *id, const uint8_t pk[MDG_KEY_BYTES])
{
    char b64[MDG_KEY_B64_LEN + 1];
    int rc;

    if (!id || !pk)
        return mdg_fail(MDG_EINVAL, "mdg_identity_revoke: NULL argument");
    mdg_pk_to_b64(pk, b64);
    switch ((rc = id->ops->revoke(id, b64, identity_now()))) {
    case 0: mdg_log(MDG_LOG_INFO, "revoked key %.12s", b64); return 0;
    case ID_ALREADY_REVOKED: return mdg_fail(MDG_ESTATE, "key %s was already revoked", b64);
    case ID_NOT_FOUND: return mdg_fail(MDG_ENOTFOUND, "key %s is neither a user nor a node", b64);
    default: return rc < 0 ? rc : mdg_fail(MDG_EIO, "identity store: unexpected outcome %d", rc);
    }
}

/* ------------------------------------------------------ broker set-up */

static void on_revoked(const uint8_t pk[MDG_KEY_BYTES], void *arg)
{
    char b64[MDG_KEY_B64_LEN + 1];
    mdg_pk_to_b64(pk, b64);
    /* on the loop thread: the count is final */
    int n = mdg_broker_disconnect_key(arg, pk, "key revoked");
    mdg_log(MDG_LOG_WARN, "key %.12s revoked: %d session(s) closed", b64, n);
}

void identity_catch_up(mdg_identity *id, mdg_broker *b)
{
    if (mdg_identity_revoked_since(id, &id->revoke_cursor, on_revoked, b) != 0)
        mdg_log(MDG_LOG_WARN, "cannot read revocations: %s", mdg_last_error());
}

static void poll_revocations(mdg_broker *b, void *arg)
{
    identity_catch_up(arg, b);
}

int mdg_identity_attach(mdg_identity *id, mdg_broker *b)
{
    int rc;
    if (!id || !b)
        return mdg_fail(MDG_EINVAL, "mdg_identity_attach needs a store and a broker");
    if ((rc = mdg_identity_revoked_since(id, &id->revoke_cursor, NULL, NULL)) != 0 ||
        (rc = mdg_broker_set_auth(b, mdg_identity_auth, id)) != 0)
        return rc;
    /* PostgreSQL tells its listeners; SQLite has no one to tell: poll. */
    if (id->ops->attach)
        return id->ops->attach(id, b);
    return mdg_broker_add_timer(b, 1000, poll_revocations, id);
}
