/* identity_sqlite.c - the identity store's SQLite backend (the default,
 * chosen by a state directory): opening the store (schema, migrations, its
 * two connections) and reading it: the ZAP handler's lookup, listing, and
 * the revocation log that mdg_identity_attach polls for a broker once a
 * second. Changes are identity_sqlite_changes.c's; the checks of what
 * callers pass and the error texts of outcomes are the front's
 * (identity.c).
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
#include "identity_sqlite.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


/* How long a writer waits for another process's write lock. */
#define BUSY_TIMEOUT_MS 5000

/* ---------------------- helpers (identity_sqlite_changes.c uses them too) */

/* Fail with SQLite's message for db, naming the database file. */
int identity_db_fail(const mdg_identity *id, sqlite3 *db, const char *what)
{
    int code = sqlite3_errcode(db) & 0xff;
    if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB)
        return mdg_fail(MDG_EIO,
                        "identity database %s is corrupt or not an SQLite database (%s: %s); "
                        "restore it from a backup or move it away",
                        id->where, what, sqlite3_errmsg(db));
    return mdg_fail(MDG_EIO, "identity database %s: %s: %s", id->where, what,
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
    sqlite_store *s = sqlite_of(id);
    sqlite3_stmt *st;
    int rc = identity_prepare(id, s->wr, sql, &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, identity_now());
    if (sqlite3_bind_parameter_count(st) >= 2)
        sqlite3_bind_int64(st, 2, MDG_INVITE_DEFAULT_TTL);
    return identity_run(id, s->wr, st, "cannot migrate the Messidge 1.x tables");
}

/* Migration 0 -> 1: an empty database, or the original library's. */
static int migrate_0_to_1(mdg_identity *id)
{
    sqlite_store *s = sqlite_of(id);
    static const char *const old[] = {"users", "nodes", "pending"};
    bool legacy[3];
    char sql[128];
    int rc;

    for (int i = 0; i < 3; i++) {
        legacy[i] = table_exists(s->wr, old[i]);
        if (legacy[i]) {
            snprintf(sql, sizeof sql, "ALTER TABLE %s RENAME TO v0_%s", old[i], old[i]);
            if ((rc = identity_exec(id, s->wr, sql, "cannot rename a Messidge 1.x table")) != 0)
                return rc;
        }
    }
    if ((rc = identity_exec(id, s->wr, schema_v1, "cannot create the tables")) != 0)
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
        if ((rc = identity_exec(id, s->wr, sql, "cannot drop a Messidge 1.x table")) != 0)
            return rc;
    }
    if (legacy[0] || legacy[1] || legacy[2])
        mdg_log(MDG_LOG_INFO, "identity database %s: migrated from the Messidge 1.x schema",
                id->where);
    return 0;
}

/* migrations[v] takes the schema from version v to v + 1. */
static int (*const migrations[MDG_IDENTITY_SCHEMA])(mdg_identity *) = {migrate_0_to_1};

/* Bring the schema up to date, in one transaction: concurrent openers
 * wait for the write lock, then find the work done. */
static int migrate(mdg_identity *id)
{
    sqlite_store *s = sqlite_of(id);
    sqlite3_stmt *st;
    int version, rc;
    char sql[64];

    if ((rc = identity_exec(id, s->wr, "BEGIN IMMEDIATE", "cannot begin the schema check")) != 0)
        return rc;
    if ((rc = identity_prepare(id, s->wr, "PRAGMA user_version", &st)) != 0)
        goto fail;
    if (sqlite3_step(st) != SQLITE_ROW) {
        rc = identity_db_fail(id, s->wr, "cannot read the schema version");
        sqlite3_finalize(st);
        goto fail;
    }
    version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (version > MDG_IDENTITY_SCHEMA || version < 0) {
        rc = mdg_fail(MDG_EPROTO,
                      "identity database %s has schema version %d; this library knows "
                      "versions up to %d (made by a newer libmessidge?)",
                      id->where, version, MDG_IDENTITY_SCHEMA);
        goto fail;
    }
    if (version == MDG_IDENTITY_SCHEMA) {
        identity_rollback(s->wr);
        return 0;
    }
    for (int v = version; v < MDG_IDENTITY_SCHEMA; v++) {
        if ((rc = migrations[v](id)) != 0)
            goto fail;
        mdg_log(MDG_LOG_INFO, "identity database %s: schema %d -> %d", id->where, v, v + 1);
    }
    /* PRAGMA takes no bound parameters; the value is our own constant. */
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", MDG_IDENTITY_SCHEMA);
    if ((rc = identity_exec(id, s->wr, sql, "cannot set the schema version")) != 0 ||
        (rc = identity_exec(id, s->wr, "COMMIT", "cannot commit the schema")) != 0)
        goto fail;
    return 0;
fail:
    identity_rollback(s->wr);
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
    sqlite_store *s = sqlite_of(id);
    sqlite3_stmt *st;

    if (sqlite3_open_v2(id->where, &s->wr, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        return identity_db_fail(id, s->wr, "cannot open");
    /* SQLite falls back to read-only when the file cannot be opened for
     * writing; an identity store must be writable. */
    if (sqlite3_db_readonly(s->wr, "main") == 1)
        return mdg_fail(MDG_EIO,
                        "identity database %s is read-only (check the file's permissions, "
                        "owner and attributes)",
                        id->where);
    sqlite3_busy_timeout(s->wr, BUSY_TIMEOUT_MS);
    sqlite3_extended_result_codes(s->wr, 1);
    if (sqlite3_create_function(s->wr, "mdg_token_hash", 1,
                                SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL, sql_token_hash, NULL,
                                NULL) != SQLITE_OK)
        return identity_db_fail(id, s->wr, "cannot register a function");

    /* The first real read of the file: this is where a file that is not a
     * database shows itself. */
    if (sqlite3_prepare_v2(s->wr, "PRAGMA journal_mode = WAL", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        int code = sqlite3_errcode(s->wr) & 0xff;
        sqlite3_finalize(st);
        if (code == SQLITE_NOTADB || code == SQLITE_CORRUPT)
            return mdg_fail(MDG_EIO,
                            "identity database %s is corrupt or not an SQLite database (%s); "
                            "restore it from a backup or move it away",
                            id->where, sqlite3_errmsg(s->wr));
        if (code == SQLITE_READONLY || code == SQLITE_CANTOPEN || code == SQLITE_PERM)
            return mdg_fail(MDG_EIO,
                            "identity database %s cannot be written (%s): the file and its "
                            "directory must be writable",
                            id->where, sqlite3_errmsg(s->wr));
        return identity_db_fail(id, s->wr, "cannot switch to WAL mode");
    }
    bool wal = sqlite3_stricmp((const char *)sqlite3_column_text(st, 0), "wal") == 0;
    sqlite3_finalize(st);
    if (!wal)
        return mdg_fail(MDG_EIO, "identity database %s: cannot switch to WAL mode", id->where);
    return 0;
}

static int open_reader(mdg_identity *id)
{
    sqlite_store *s = sqlite_of(id);
    static const char role_sql[] =
        "SELECT 1, config FROM users WHERE pk = ?1 AND revoked IS NULL "
        "UNION ALL "
        "SELECT 2, config FROM nodes WHERE pk = ?1 AND revoked IS NULL LIMIT 1";

    if (sqlite3_open_v2(id->where, &s->rd, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        return identity_db_fail(id, s->rd, "cannot open for reading");
    sqlite3_busy_timeout(s->rd, BUSY_TIMEOUT_MS);
    if (sqlite3_prepare_v3(s->rd, role_sql, -1, SQLITE_PREPARE_PERSISTENT, &s->role_stmt,
                           NULL) != SQLITE_OK)
        return identity_db_fail(id, s->rd, "cannot prepare the key lookup");
    return 0;
}

static void sqlite_close(mdg_identity *id)
{
    sqlite_store *s = sqlite_of(id);
    if (!s)
        return;
    sqlite3_finalize(s->role_stmt);
    /* Reader first: the last connection to close checkpoints the WAL. */
    sqlite3_close(s->rd);
    sqlite3_close(s->wr);
    pthread_mutex_destroy(&s->rd_lock);
    pthread_mutex_destroy(&s->wr_lock);
    free(s);
    id->be = NULL;
}

/* ---------------------------------------------------------------- lookups */

static int sqlite_role(mdg_identity *id, const char *b64, char **config_json)
{
    sqlite_store *s = sqlite_of(id);
    int rc, role = MDG_ROLE_NONE;

    pthread_mutex_lock(&s->rd_lock);
    sqlite3_stmt *st = s->role_stmt;
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
        role = identity_db_fail(id, s->rd, "cannot look up a key");
    }
    /* Reset ends the read transaction, so the next lookup sees new rows. */
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    pthread_mutex_unlock(&s->rd_lock);
    return role;
}

/* ------------------------------------------------------------- reporting */

static int sqlite_last_revocation(mdg_identity *id, int64_t *seq)
{
    sqlite_store *s = sqlite_of(id);
    sqlite3_stmt *st;
    int rc;

    pthread_mutex_lock(&s->rd_lock);
    if ((rc = identity_prepare(id, s->rd, "SELECT coalesce(max(seq), 0) FROM revocations", &st)) ==
        0) {
        if (sqlite3_step(st) == SQLITE_ROW)
            *seq = sqlite3_column_int64(st, 0);
        else
            rc = identity_db_fail(id, s->rd, "cannot read the revocations");
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->rd_lock);
    return rc;
}

static int sqlite_revocations(mdg_identity *id, int64_t after, identity_revocation **rows,
                              size_t *n)
{
    sqlite_store *s = sqlite_of(id);
    sqlite3_stmt *st;
    size_t cap = 0;
    int rc;

    pthread_mutex_lock(&s->rd_lock);
    if ((rc = identity_prepare(
             id, s->rd, "SELECT seq, pk FROM revocations WHERE seq > ? ORDER BY seq", &st)) != 0) {
        pthread_mutex_unlock(&s->rd_lock);
        return rc;
    }
    sqlite3_bind_int64(st, 1, after);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (identity_rows_push(rows, n, &cap, sqlite3_column_int64(st, 0),
                               (const char *)sqlite3_column_text(st, 1)) != 0)
            break;
    rc = rc == SQLITE_DONE  ? 0
         : rc == SQLITE_ROW ? MDG_ENOMEM
                            : identity_db_fail(id, s->rd, "cannot read the revocations");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->rd_lock);
    if (rc) {
        free(*rows);
        *rows = NULL;
        *n = 0;
    }
    return rc;
}

static int sqlite_list(mdg_identity *id, int (*fn)(const mdg_identity_entry *e, void *arg),
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
    sqlite_store *s = sqlite_of(id);
    sqlite3_stmt *st;
    int rc = 0;

    pthread_mutex_lock(&s->rd_lock);
    /* One read transaction: the three groups are one consistent picture. */
    if ((rc = identity_exec(id, s->rd, "BEGIN", "cannot begin reading")) != 0) {
        pthread_mutex_unlock(&s->rd_lock);
        return rc;
    }
    for (size_t q = 0; rc == 0 && q < sizeof queries / sizeof queries[0]; q++) {
        if ((rc = identity_prepare(id, s->rd, queries[q].sql, &st)) != 0)
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
            rc = identity_db_fail(id, s->rd, "cannot list");
        sqlite3_finalize(st);
    }
    sqlite3_exec(s->rd, "COMMIT", NULL, NULL, NULL);
    pthread_mutex_unlock(&s->rd_lock);
    return rc;
}

/* ---------------------------------------------------------------- opening */

static const identity_ops sqlite_ops = {
    .close = sqlite_close,
    .role = sqlite_role,
    .json_valid = sqlite_json_valid,
    .invite = sqlite_invite,
    .confirm = sqlite_confirm,
    .add_key = sqlite_add_key,
    .revoke = sqlite_revoke,
    .last_revocation = sqlite_last_revocation,
    .revocations = sqlite_revocations,
    .list = sqlite_list,
    .attach = NULL, /* the front polls the log */
};

int identity_sqlite_open(mdg_identity *id, const char *state_dir, unsigned flags)
{
    sqlite_store *s;
    struct stat st;
    int rc, n;

    if (!sqlite3_threadsafe())
        return mdg_fail(MDG_ESYS, "SQLite was built without thread support");
    n = snprintf(id->where, sizeof id->where, "%s/%s", state_dir, MDG_IDENTITY_DB_FILE);
    if (n < 0 || (size_t)n >= sizeof id->where)
        return mdg_fail(MDG_EINVAL, "state directory path %s is too long", state_dir);
    /* Without MDG_IDENTITY_CREATE a missing store is the caller's mistake
     * (a mistyped directory), not something to make. */
    if (!(flags & MDG_IDENTITY_CREATE) && stat(id->where, &st) != 0)
        return mdg_fail(MDG_ENOENT, "no identity store at %s", id->where);
    if (!(s = calloc(1, sizeof *s)))
        return mdg_fail_plain(MDG_ENOMEM);
    pthread_mutex_init(&s->rd_lock, NULL);
    pthread_mutex_init(&s->wr_lock, NULL);
    id->be = s;
    id->ops = &sqlite_ops;
    if ((rc = mdg_ensure_dir(state_dir, "state directory")) != 0 ||
        (rc = ensure_db_file(id->where)) != 0 || (rc = open_writer(id)) != 0 ||
        (rc = migrate(id)) != 0 || (rc = open_reader(id)) != 0)
        return rc; /* the front closes */
    return 0;
}
