/* identity.c - the identity store: who may connect, in SQLite. This file
 * opens the store (schema, migrations, its two connections) and reads it:
 * the ZAP handler's lookup, listing, and the revocation log that
 * mdg_identity_attach polls for a broker. Changes are identity_changes.c's.
 *
 * One database, STATE_DIR/identity.sqlite3, in WAL mode so that lookups
 * (the broker's ZAP handler, on its loop thread) never wait for a writer
 * (the account server, or messidge-admin in another process). Each handle
 * holds two connections: a read-only one for lookups and a read-write one
 * for changes, each behind its own mutex. Every change is one transaction
 * begun with BEGIN IMMEDIATE, which takes SQLite's write lock up front, so
 * a check-then-write (confirming an invitation) cannot interleave with
 * another writer, whether in this process or another.
 *
 * Schema (PRAGMA user_version = 1):
 *
 *   users       (id, pk, email, config, created, revoked, token_hash)
 *   nodes       (id, pk, name, config, created, revoked)
 *   pending     (token_hash, email, created, expires)
 *   revocations (seq, pk, at)        -- append-only log for live brokers
 *
 * Keys are stored as standard base64 text (44 chars), as the original
 * Messidge did, so the file reads well in the sqlite3 shell. Times are
 * unix seconds. Invitation tokens are never stored, only a hash of them
 * (BLAKE2b, base64): a leaked copy of the database cannot confirm a
 * pending invitation. A confirmed user keeps the hash of the token it
 * used, which is how "already used" is told apart from "unknown".
 *
 * Version 0 is either an empty file or the original Messidge 1.x schema
 * (users/nodes/pending with pk, email and json columns); migration 0 -> 1
 * creates the tables and carries the old rows over.
 */
#include "identity_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

/* How long a writer waits for another process's write lock. */
#define BUSY_TIMEOUT_MS 5000

/* ----------------------------- helpers (identity_changes.c uses them too) */

int64_t identity_now(void)
{
    return (int64_t)time(NULL);
}

/* Fail with SQLite's message for db, naming the database file. */
int identity_db_fail(const mdg_identity *id, sqlite3 *db, const char *what)
{
    int code = sqlite3_errcode(db) & 0xff;
    if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB)
        return mdg_fail(MDG_EIO,
                        "identity database %s is corrupt or not an SQLite database (%s: %s); "
                        "restore it from a backup or move it away",
                        id->path, what, sqlite3_errmsg(db));
    return mdg_fail(MDG_EIO, "identity database %s: %s: %s", id->path, what,
                    sqlite3_errmsg(db));
}

/* Run SQL without results (may hold several statements). */
int identity_exec(const mdg_identity *id, sqlite3 *db, const char *sql, const char *what)
{
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return identity_db_fail(id, db, what);
    return 0;
}

int identity_prepare(const mdg_identity *id, sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK)
        return identity_db_fail(id, db, "cannot prepare a statement");
    return 0;
}

/* Step a statement that returns no rows, then finalize it. */
int identity_run(const mdg_identity *id, sqlite3 *db, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : identity_db_fail(id, db, what);
    sqlite3_finalize(st);
    return rc;
}

void identity_rollback(sqlite3 *db)
{
    /* Harmless when no transaction is open (SQLite may already have rolled
     * back after an error). */
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

static int sodium_ready(void)
{
    if (sodium_init() < 0)
        return mdg_fail(MDG_ESYS, "libsodium initialisation failed");
    return 0;
}

/* The stored form of a token: unpadded URL-safe base64 of its BLAKE2b. */
void identity_token_hash(const char *token, size_t len, char out[HASH_B64_LEN + 1])
{
    uint8_t h[HASH_BYTES];
    crypto_generichash(h, sizeof h, (const unsigned char *)token, len, NULL, 0);
    sodium_bin2base64(out, HASH_B64_LEN + 1, h, sizeof h,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

/* SQL function mdg_token_hash(text), for migrating plaintext tokens. */
static void sql_token_hash(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    char out[HASH_B64_LEN + 1];
    (void)argc;
    const unsigned char *t = sqlite3_value_text(argv[0]);
    if (!t) {
        sqlite3_result_null(ctx);
        return;
    }
    identity_token_hash((const char *)t, (size_t)sqlite3_value_bytes(argv[0]), out);
    sqlite3_result_text(ctx, out, HASH_B64_LEN, SQLITE_TRANSIENT);
}

/* ---------------------------------------------------------------- opening */

/* Schema version 1. json_valid keeps configs parseable by whoever reads
 * them; CHECKs keep hand edits honest. */
static const char schema_v1[] =
    "CREATE TABLE users ("
    "  id INTEGER PRIMARY KEY,"
    "  pk TEXT NOT NULL UNIQUE CHECK (length(pk) = 44),"
    "  email TEXT NOT NULL,"
    "  config TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(config)),"
    "  created INTEGER NOT NULL,"
    "  revoked INTEGER,"
    "  token_hash TEXT UNIQUE);"
    "CREATE TABLE nodes ("
    "  id INTEGER PRIMARY KEY,"
    "  pk TEXT NOT NULL UNIQUE CHECK (length(pk) = 44),"
    "  name TEXT NOT NULL,"
    "  config TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(config)),"
    "  created INTEGER NOT NULL,"
    "  revoked INTEGER);"
    "CREATE TABLE pending ("
    "  token_hash TEXT PRIMARY KEY,"
    "  email TEXT NOT NULL,"
    "  created INTEGER NOT NULL,"
    "  expires INTEGER NOT NULL);"
    "CREATE TABLE revocations ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  pk TEXT NOT NULL,"
    "  at INTEGER NOT NULL);";

/* Carrying over the original Messidge 1.x tables (renamed v0_* first).
 * Their json column holds '{}' in every path of the original; anything
 * that is not valid JSON becomes '{}'. Pending tokens are hashed and
 * given the default lifetime from now. */
static const char migrate_v0_users[] =
    "INSERT OR IGNORE INTO users (pk, email, config, created)"
    "  SELECT pk, email,"
    "    CASE WHEN json_valid(CAST(json AS TEXT)) THEN CAST(json AS TEXT) ELSE '{}' END,"
    "    ?1 FROM v0_users WHERE length(pk) = 44;";
static const char migrate_v0_nodes[] =
    "INSERT OR IGNORE INTO nodes (pk, name, config, created)"
    "  SELECT pk, '',"
    "    CASE WHEN json_valid(CAST(json AS TEXT)) THEN CAST(json AS TEXT) ELSE '{}' END,"
    "    ?1 FROM v0_nodes WHERE length(pk) = 44;";
static const char migrate_v0_pending[] =
    "INSERT OR IGNORE INTO pending (token_hash, email, created, expires)"
    "  SELECT mdg_token_hash(token), email, ?1, ?1 + ?2 FROM v0_pending;";

static bool table_exists(sqlite3 *db, const char *name)
{
    sqlite3_stmt *st = NULL;
    bool found = false;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        found = sqlite3_step(st) == SQLITE_ROW;
    }
    sqlite3_finalize(st);
    return found;
}

/* Run an INSERT ... SELECT with ?1 = now and ?2 = the default TTL. */
static int copy_rows(mdg_identity *id, const char *sql)
{
    sqlite3_stmt *st;
    int rc = identity_prepare(id, id->wr, sql, &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, identity_now());
    if (sqlite3_bind_parameter_count(st) >= 2)
        sqlite3_bind_int64(st, 2, MDG_INVITE_DEFAULT_TTL);
    return identity_run(id, id->wr, st, "cannot migrate the Messidge 1.x tables");
}

/* Migration 0 -> 1: an empty database, or the original library's. */
static int migrate_0_to_1(mdg_identity *id)
{
    static const char *const old[] = {"users", "nodes", "pending"};
    bool legacy[3];
    char sql[128];
    int rc;

    for (int i = 0; i < 3; i++) {
        legacy[i] = table_exists(id->wr, old[i]);
        if (legacy[i]) {
            snprintf(sql, sizeof sql, "ALTER TABLE %s RENAME TO v0_%s", old[i], old[i]);
            if ((rc = identity_exec(id, id->wr, sql, "cannot rename a Messidge 1.x table")) != 0)
                return rc;
        }
    }
    if ((rc = identity_exec(id, id->wr, schema_v1, "cannot create the tables")) != 0)
        return rc;
    if (legacy[0] && (rc = copy_rows(id, migrate_v0_users)) != 0)
        return rc;
    if (legacy[1] && (rc = copy_rows(id, migrate_v0_nodes)) != 0)
        return rc;
    if (legacy[2] && (rc = copy_rows(id, migrate_v0_pending)) != 0)
        return rc;
    for (int i = 0; i < 3; i++) {
        if (!legacy[i])
            continue;
        snprintf(sql, sizeof sql, "DROP TABLE v0_%s", old[i]);
        if ((rc = identity_exec(id, id->wr, sql, "cannot drop a Messidge 1.x table")) != 0)
            return rc;
    }
    if (legacy[0] || legacy[1] || legacy[2])
        mdg_log(MDG_LOG_INFO, "identity database %s: migrated from the Messidge 1.x schema",
                id->path);
    return 0;
}

/* migrations[v] takes the schema from version v to v + 1. */
static int (*const migrations[MDG_IDENTITY_SCHEMA])(mdg_identity *) = {migrate_0_to_1};

/* Bring the schema up to date, in one transaction: concurrent openers
 * wait for the write lock, then find the work done. */
static int migrate(mdg_identity *id)
{
    sqlite3_stmt *st;
    int version, rc;
    char sql[64];

    if ((rc = identity_exec(id, id->wr, "BEGIN IMMEDIATE", "cannot begin the schema check")) != 0)
        return rc;
    if ((rc = identity_prepare(id, id->wr, "PRAGMA user_version", &st)) != 0)
        goto fail;
    if (sqlite3_step(st) != SQLITE_ROW) {
        rc = identity_db_fail(id, id->wr, "cannot read the schema version");
        sqlite3_finalize(st);
        goto fail;
    }
    version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (version > MDG_IDENTITY_SCHEMA || version < 0) {
        rc = mdg_fail(MDG_EPROTO,
                      "identity database %s has schema version %d; this library knows "
                      "versions up to %d (made by a newer libmessidge?)",
                      id->path, version, MDG_IDENTITY_SCHEMA);
        goto fail;
    }
    if (version == MDG_IDENTITY_SCHEMA) {
        identity_rollback(id->wr);
        return 0;
    }
    for (int v = version; v < MDG_IDENTITY_SCHEMA; v++) {
        if ((rc = migrations[v](id)) != 0)
            goto fail;
        mdg_log(MDG_LOG_INFO, "identity database %s: schema %d -> %d", id->path, v, v + 1);
    }
    /* PRAGMA takes no bound parameters; the value is our own constant. */
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", MDG_IDENTITY_SCHEMA);
    if ((rc = identity_exec(id, id->wr, sql, "cannot set the schema version")) != 0 ||
        (rc = identity_exec(id, id->wr, "COMMIT", "cannot commit the schema")) != 0)
        goto fail;
    return 0;
fail:
    identity_rollback(id->wr);
    return rc;
}

/* Create an empty database file with mode 0600 if there is none. SQLite
 * gives its -wal and -shm files the database file's mode. */
static int ensure_db_file(const char *path)
{
    struct stat st;
    int fd, err;

    if (stat(path, &st) == 0) {
        if (!S_ISREG(st.st_mode))
            return mdg_fail(MDG_EIO, "identity database %s is not a regular file", path);
        return 0;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) {
        err = errno;
        return mdg_fail(MDG_EIO, "cannot create identity database %s: %s", path, strerror(err));
    }
    if (fd >= 0)
        close(fd);
    return 0;
}

/* Open the read-write connection and check it really is writable. */
static int open_writer(mdg_identity *id)
{
    sqlite3_stmt *st;

    if (sqlite3_open_v2(id->path, &id->wr, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        return identity_db_fail(id, id->wr, "cannot open");
    /* SQLite falls back to read-only when the file cannot be opened for
     * writing; an identity store must be writable. */
    if (sqlite3_db_readonly(id->wr, "main") == 1)
        return mdg_fail(MDG_EIO,
                        "identity database %s is read-only (check the file's permissions, "
                        "owner and attributes)",
                        id->path);
    sqlite3_busy_timeout(id->wr, BUSY_TIMEOUT_MS);
    sqlite3_extended_result_codes(id->wr, 1);
    if (sqlite3_create_function(id->wr, "mdg_token_hash", 1,
                                SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL, sql_token_hash, NULL,
                                NULL) != SQLITE_OK)
        return identity_db_fail(id, id->wr, "cannot register a function");

    /* The first real read of the file: this is where a file that is not a
     * database shows itself. */
    if (sqlite3_prepare_v2(id->wr, "PRAGMA journal_mode = WAL", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        int code = sqlite3_errcode(id->wr) & 0xff;
        sqlite3_finalize(st);
        if (code == SQLITE_NOTADB || code == SQLITE_CORRUPT)
            return mdg_fail(MDG_EIO,
                            "identity database %s is corrupt or not an SQLite database (%s); "
                            "restore it from a backup or move it away",
                            id->path, sqlite3_errmsg(id->wr));
        if (code == SQLITE_READONLY || code == SQLITE_CANTOPEN || code == SQLITE_PERM)
            return mdg_fail(MDG_EIO,
                            "identity database %s cannot be written (%s): the file and its "
                            "directory must be writable",
                            id->path, sqlite3_errmsg(id->wr));
        return identity_db_fail(id, id->wr, "cannot switch to WAL mode");
    }
    bool wal = sqlite3_stricmp((const char *)sqlite3_column_text(st, 0), "wal") == 0;
    sqlite3_finalize(st);
    if (!wal)
        return mdg_fail(MDG_EIO, "identity database %s: cannot switch to WAL mode", id->path);
    return 0;
}

static int open_reader(mdg_identity *id)
{
    static const char role_sql[] =
        "SELECT 1, config FROM users WHERE pk = ?1 AND revoked IS NULL "
        "UNION ALL "
        "SELECT 2, config FROM nodes WHERE pk = ?1 AND revoked IS NULL LIMIT 1";

    if (sqlite3_open_v2(id->path, &id->rd, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        return identity_db_fail(id, id->rd, "cannot open for reading");
    sqlite3_busy_timeout(id->rd, BUSY_TIMEOUT_MS);
    if (sqlite3_prepare_v3(id->rd, role_sql, -1, SQLITE_PREPARE_PERSISTENT, &id->role_stmt,
                           NULL) != SQLITE_OK)
        return identity_db_fail(id, id->rd, "cannot prepare the key lookup");
    return 0;
}

int mdg_identity_open(mdg_identity **out, const char *state_dir)
{
    mdg_identity *id;
    int rc, n;

    if (!out)
        return mdg_fail(MDG_EINVAL, "mdg_identity_open: out is NULL");
    *out = NULL;
    if (!state_dir)
        state_dir = MDG_DEFAULT_STATE_DIR;
    if (!*state_dir)
        return mdg_fail(MDG_EINVAL, "state directory is empty");
    if ((rc = sodium_ready()) != 0)
        return rc;
    if (!sqlite3_threadsafe())
        return mdg_fail(MDG_ESYS, "SQLite was built without thread support");

    id = calloc(1, sizeof *id);
    if (!id)
        return mdg_fail_plain(MDG_ENOMEM);
    pthread_mutex_init(&id->rd_lock, NULL);
    pthread_mutex_init(&id->wr_lock, NULL);
    n = snprintf(id->path, sizeof id->path, "%s/%s", state_dir, MDG_IDENTITY_DB_FILE);
    if (n < 0 || (size_t)n >= sizeof id->path) {
        rc = mdg_fail(MDG_EINVAL, "state directory path %s is too long", state_dir);
        goto fail;
    }
    if ((rc = mdg_ensure_dir(state_dir, "state directory")) != 0 || (rc = ensure_db_file(id->path)) != 0 ||
        (rc = open_writer(id)) != 0 || (rc = migrate(id)) != 0 || (rc = open_reader(id)) != 0)
        goto fail;
    *out = id;
    return 0;
fail:
    mdg_identity_destroy(&id);
    return rc;
}

void mdg_identity_destroy(mdg_identity **idp)
{
    mdg_identity *id;
    if (!idp || !*idp)
        return;
    id = *idp;
    sqlite3_finalize(id->role_stmt);
    /* Reader first: the last connection to close checkpoints the WAL. */
    sqlite3_close(id->rd);
    sqlite3_close(id->wr);
    pthread_mutex_destroy(&id->rd_lock);
    pthread_mutex_destroy(&id->wr_lock);
    free(id);
    *idp = NULL;
}

/* ---------------------------------------------------------------- lookups */

int mdg_identity_role(mdg_identity *id, const uint8_t pk[MDG_KEY_BYTES], char **config_json)
{
    char b64[MDG_KEY_B64_LEN + 1];
    sqlite3_stmt *st;
    int rc, role = MDG_ROLE_NONE;

    if (config_json)
        *config_json = NULL;
    if (!id || !pk)
        return mdg_fail(MDG_EINVAL, "mdg_identity_role: NULL argument");
    mdg_pk_to_b64(pk, b64);

    pthread_mutex_lock(&id->rd_lock);
    st = id->role_stmt;
    sqlite3_bind_text(st, 1, b64, MDG_KEY_B64_LEN, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        role = sqlite3_column_int(st, 0);
        if (config_json) {
            const char *cfg = (const char *)sqlite3_column_text(st, 1);
            *config_json = strdup(cfg ? cfg : "{}");
            if (!*config_json)
                role = mdg_fail_plain(MDG_ENOMEM);
        }
    } else if (rc != SQLITE_DONE) {
        role = identity_db_fail(id, id->rd, "cannot look up a key");
    }
    /* Reset ends the read transaction, so the next lookup sees new rows. */
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    pthread_mutex_unlock(&id->rd_lock);
    return role;
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

/* ------------------------------------------------------------- reporting */

int mdg_identity_revoked_since(mdg_identity *id, int64_t *cursor,
                               void (*fn)(const uint8_t pk[MDG_KEY_BYTES], void *arg),
                               void *arg)
{
    struct row { int64_t seq; uint8_t pk[MDG_KEY_BYTES]; } *rows = NULL, *grown;
    size_t n = 0, cap = 0;
    sqlite3_stmt *st;
    int rc;

    if (!id || !cursor)
        return mdg_fail(MDG_EINVAL, "mdg_identity_revoked_since: NULL argument");
    pthread_mutex_lock(&id->rd_lock);
    if (!fn) {
        if ((rc = identity_prepare(id, id->rd, "SELECT coalesce(max(seq), 0) FROM revocations",
                                   &st)) == 0) {
            if (sqlite3_step(st) == SQLITE_ROW)
                *cursor = sqlite3_column_int64(st, 0);
            else
                rc = identity_db_fail(id, id->rd, "cannot read the revocations");
            sqlite3_finalize(st);
        }
        pthread_mutex_unlock(&id->rd_lock);
        return rc;
    }
    if ((rc = identity_prepare(
             id, id->rd, "SELECT seq, pk FROM revocations WHERE seq > ? ORDER BY seq", &st)) != 0) {
        pthread_mutex_unlock(&id->rd_lock);
        return rc;
    }
    sqlite3_bind_int64(st, 1, *cursor);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *b64 = (const char *)sqlite3_column_text(st, 1);
        uint8_t pk[MDG_KEY_BYTES];
        if (!b64 || mdg_pk_from_b64(pk, b64) != 0)
            continue; /* a hand-edited row: nothing to cut */
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            grown = realloc(rows, cap * sizeof *rows);
            if (!grown) {
                free(rows);
                sqlite3_finalize(st);
                pthread_mutex_unlock(&id->rd_lock);
                return mdg_fail_plain(MDG_ENOMEM);
            }
            rows = grown;
        }
        rows[n].seq = sqlite3_column_int64(st, 0);
        memcpy(rows[n].pk, pk, MDG_KEY_BYTES);
        n++;
    }
    rc = rc == SQLITE_DONE ? 0 : identity_db_fail(id, id->rd, "cannot read the revocations");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&id->rd_lock);

    /* Calls without the lock: fn may use the store. */
    for (size_t i = 0; rc == 0 && i < n; i++) {
        fn(rows[i].pk, arg);
        *cursor = rows[i].seq;
    }
    free(rows);
    return rc;
}

int mdg_identity_list(mdg_identity *id, int (*fn)(const mdg_identity_entry *e, void *arg),
                      void *arg)
{
    static const struct {
        int kind;
        const char *sql;
    } queries[] = {
        {MDG_ENTRY_USER,
         "SELECT pk, email, config, created, coalesce(revoked, 0), NULL, 0 FROM users ORDER BY id"},
        {MDG_ENTRY_NODE,
         "SELECT pk, name, config, created, coalesce(revoked, 0), NULL, 0 FROM nodes ORDER BY id"},
        {MDG_ENTRY_PENDING, "SELECT NULL, email, NULL, created, 0, substr(token_hash, 1, 8), "
                            "expires FROM pending ORDER BY created, rowid"},
    };
    sqlite3_stmt *st;
    int rc = 0;

    if (!id || !fn)
        return mdg_fail(MDG_EINVAL, "mdg_identity_list: NULL argument");
    pthread_mutex_lock(&id->rd_lock);
    /* One read transaction: the three groups are one consistent picture. */
    if ((rc = identity_exec(id, id->rd, "BEGIN", "cannot begin reading")) != 0) {
        pthread_mutex_unlock(&id->rd_lock);
        return rc;
    }
    for (size_t q = 0; rc == 0 && q < sizeof queries / sizeof queries[0]; q++) {
        if ((rc = identity_prepare(id, id->rd, queries[q].sql, &st)) != 0)
            break;
        int step = SQLITE_DONE;
        while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
            mdg_identity_entry e = {
                .kind = queries[q].kind,
                .pk_b64 = (const char *)sqlite3_column_text(st, 0),
                .name = (const char *)sqlite3_column_text(st, 1),
                .config = (const char *)sqlite3_column_text(st, 2),
                .created = sqlite3_column_int64(st, 3),
                .revoked = sqlite3_column_int64(st, 4),
                .ref = (const char *)sqlite3_column_text(st, 5),
                .expires = sqlite3_column_int64(st, 6),
            };
            if (!e.name)
                e.name = "";
            rc = fn(&e, arg);
        }
        if (rc == 0 && step != SQLITE_DONE)
            rc = identity_db_fail(id, id->rd, "cannot list");
        sqlite3_finalize(st);
    }
    sqlite3_exec(id->rd, "COMMIT", NULL, NULL, NULL);
    pthread_mutex_unlock(&id->rd_lock);
    return rc;
}

/* ------------------------------------------------------ broker set-up */

static void on_revoked(const uint8_t pk[MDG_KEY_BYTES], void *arg)
{
    char b64[MDG_KEY_B64_LEN + 1];
    mdg_pk_to_b64(pk, b64);
    /* a broker timer runs on the loop thread: the count is final */
    int n = mdg_broker_disconnect_key(arg, pk, "key revoked");
    mdg_log(MDG_LOG_WARN, "key %.12s revoked: %d session(s) closed", b64, n);
}

static void poll_revocations(mdg_broker *b, void *arg)
{
    mdg_identity *id = arg;
    if (mdg_identity_revoked_since(id, &id->revoke_cursor, on_revoked, b) != 0)
        mdg_log(MDG_LOG_WARN, "cannot read revocations: %s", mdg_last_error());
}

int mdg_identity_attach(mdg_identity *id, mdg_broker *b)
{
    int rc;
    if (!id || !b)
        return mdg_fail(MDG_EINVAL, "mdg_identity_attach needs a store and a broker");
    if ((rc = mdg_identity_revoked_since(id, &id->revoke_cursor, NULL, NULL)) != 0 ||
        (rc = mdg_broker_set_auth(b, mdg_identity_auth, id)) != 0)
        return rc;
    return mdg_broker_add_timer(b, 1000, poll_revocations, id);
}
