/* test_identity.c - the identity store on its own: opening and migrating,
 * invitations (single use, expiry), nodes and users, revocation and the
 * revocation cursor, listing, concurrent invites and confirms from many
 * threads and handles, and the clear errors for a corrupt database, a
 * state "directory" that is a file, and a read-only database.
 *
 * Built twice: test_identity runs it on SQLite; test_identity_pg
 * (MDG_TEST_PG) runs the same body (test_store) on PostgreSQL, in a server
 * of its own (pgserver.h), with what differs there: the schema made only
 * when asked, a newer schema refused, and bad or unreachable URIs. */
#include "messidge_identity.h"
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <sqlite3.h>

#ifdef MDG_TEST_PG
#include "pgserver.h"
#else
static char base[] = "/tmp/mdg-test-identity-XXXXXX";

static void path_in(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", base, name);
}
#endif

static void new_key(uint8_t pk[32])
{
    mdg_keys *k = NULL;
    if (mdg_keys_new(&k) != 0)
        exit(2);
    memcpy(pk, mdg_keys_public(k), 32);
    mdg_keys_destroy(&k);
}

#ifndef MDG_TEST_PG
/* user_version of a database file, read with SQLite directly. */
static int schema_version(const char *db_path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int v = -1;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static int count_rows(const char *db_path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int v = -1;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

#endif

static bool last_error_has(const char *needle)
{
    bool ok = strstr(mdg_last_error(), needle) != NULL;
    if (!ok)
        fprintf(stderr, "  last error \"%s\" lacks \"%s\"\n", mdg_last_error(), needle);
    return ok;
}

/* ------------------------------------------------------------ open, schema */
#ifndef MDG_TEST_PG

static void test_open(void)
{
    char dir[256], db[300];
    struct stat st;
    mdg_identity *id = NULL;

    path_in(dir, sizeof dir, "state");
    snprintf(db, sizeof db, "%s/%s", dir, MDG_IDENTITY_DB_FILE);
    CHECK_RC(mdg_identity_open(&id, dir), 0);
    CHECK(id != NULL);
    CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700);
    CHECK(stat(db, &st) == 0 && (st.st_mode & 0777) == 0600);
    CHECK(schema_version(db) == MDG_IDENTITY_SCHEMA);
    mdg_identity_destroy(&id);
    CHECK(id == NULL);
    mdg_identity_destroy(&id); /* NULL is fine */

    /* Reopening migrates nothing and keeps the data. */
    uint8_t pk[32];
    new_key(pk);
    CHECK_RC(mdg_identity_open(&id, dir), 0);
    CHECK_RC(mdg_identity_add_user(id, "keep@example.org", pk, NULL), 0);
    mdg_identity_destroy(&id);
    for (int i = 0; i < 3; i++) {
        CHECK_RC(mdg_identity_open(&id, dir), 0);
        CHECK(mdg_identity_role(id, pk, NULL) == MDG_ROLE_USER);
        mdg_identity_destroy(&id);
    }
    CHECK(schema_version(db) == MDG_IDENTITY_SCHEMA);
    CHECK(count_rows(db, "SELECT count(*) FROM users") == 1);

    /* Two handles on one directory at once. */
    mdg_identity *a = NULL, *b = NULL;
    CHECK_RC(mdg_identity_open(&a, dir), 0);
    CHECK_RC(mdg_identity_open(&b, dir), 0);
    CHECK(mdg_identity_role(b, pk, NULL) == MDG_ROLE_USER);
    mdg_identity_destroy(&a);
    mdg_identity_destroy(&b);

    /* NULL means ./messidge-state. */
    char cwd[512];
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    CHECK(chdir(base) == 0);
    CHECK_RC(mdg_identity_open(&id, NULL), 0);
    mdg_identity_destroy(&id);
    CHECK(stat(MDG_DEFAULT_STATE_DIR "/" MDG_IDENTITY_DB_FILE, &st) == 0);
    CHECK(chdir(cwd) == 0);

    CHECK_RC(mdg_identity_open(NULL, dir), MDG_EINVAL);
    CHECK_RC(mdg_identity_open(&id, ""), MDG_EINVAL);
}

/* A database made by the original Messidge 1.x is carried over. */
static void test_legacy_migration(void)
{
    char dir[256], db[300];
    uint8_t upk[32], npk[32], other[32];
    char ub64[45], nb64[45];
    sqlite3 *s = NULL;
    mdg_identity *id = NULL;
    char *cfg = NULL;

    path_in(dir, sizeof dir, "legacy");
    CHECK(mkdir(dir, 0700) == 0);
    snprintf(db, sizeof db, "%s/%s", dir, MDG_IDENTITY_DB_FILE);
    new_key(upk);
    new_key(npk);
    new_key(other);
    mdg_pk_to_b64(upk, ub64);
    mdg_pk_to_b64(npk, nb64);
    CHECK(sqlite3_open(db, &s) == SQLITE_OK);
    CHECK(sqlite3_exec(s,
                       "CREATE TABLE nodes (pk TEXT NOT NULL UNIQUE, json BLOB);"
                       "CREATE TABLE users (pk TEXT NOT NULL UNIQUE, email TEXT NOT NULL, json BLOB);"
                       "CREATE TABLE pending (token TEXT NOT NULL UNIQUE, email TEXT NOT NULL);"
                       "INSERT INTO pending VALUES ('oldShortUuidToken22ch', 'old@example.org');",
                       NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_stmt *st;
    CHECK(sqlite3_prepare_v2(s, "INSERT INTO users VALUES (?, 'u@example.org', '{\"a\":1}')", -1,
                             &st, NULL) == SQLITE_OK);
    sqlite3_bind_text(st, 1, ub64, -1, SQLITE_STATIC);
    CHECK(sqlite3_step(st) == SQLITE_DONE);
    sqlite3_finalize(st);
    CHECK(sqlite3_prepare_v2(s, "INSERT INTO nodes VALUES (?, '{}')", -1, &st, NULL) == SQLITE_OK);
    sqlite3_bind_text(st, 1, nb64, -1, SQLITE_STATIC);
    CHECK(sqlite3_step(st) == SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(s);

    CHECK_RC(mdg_identity_open(&id, dir), 0);
    CHECK(schema_version(db) == MDG_IDENTITY_SCHEMA);
    CHECK(mdg_identity_role(id, upk, &cfg) == MDG_ROLE_USER);
    CHECK(cfg && strcmp(cfg, "{\"a\":1}") == 0);
    free(cfg);
    CHECK(mdg_identity_role(id, npk, NULL) == MDG_ROLE_NODE);
    /* The old plaintext token was hashed and still works, once. */
    CHECK(count_rows(db, "SELECT count(*) FROM pending WHERE token_hash = 'oldShortUuidToken22ch'") == 0);
    CHECK_RC(mdg_identity_confirm(id, "oldShortUuidToken22ch", other), 0);
    CHECK(mdg_identity_role(id, other, NULL) == MDG_ROLE_USER);
    CHECK(count_rows(db, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'v0_%'") == 0);
    mdg_identity_destroy(&id);

    /* A schema from the future is refused. */
    CHECK(sqlite3_open(db, &s) == SQLITE_OK);
    CHECK(sqlite3_exec(s, "PRAGMA user_version = 99", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(s);
    CHECK_RC(mdg_identity_open(&id, dir), MDG_EPROTO);
    CHECK(last_error_has("schema version 99"));
    CHECK(id == NULL);
}

#endif

/* --------------------------------------------------- invitations, roles */

static bool token_shaped(const char *t)
{
    if (strlen(t) != MDG_TOKEN_LEN || t[0] == '-')
        return false;
    for (const char *p = t; *p; p++)
        if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", *p))
            return false;
    return true;
}

static void test_invitations(mdg_identity *id)
{
    char token[MDG_TOKEN_LEN + 1], token2[MDG_TOKEN_LEN + 1], small[8];
    uint8_t pk[32], pk2[32], pk3[32], zero[32] = {0};
    char *cfg = (char *)"x";

    new_key(pk);
    new_key(pk2);
    new_key(pk3);
    CHECK(mdg_identity_role(id, pk, &cfg) == MDG_ROLE_NONE);
    CHECK(cfg == NULL);

    CHECK_RC(mdg_identity_invite(id, "alice@example.org", 0, token, sizeof token), 0);
    CHECK(token_shaped(token));
    CHECK_RC(mdg_identity_invite(id, "alice@example.org", 0, small, sizeof small), MDG_EINVAL);
    CHECK_RC(mdg_identity_invite(id, "", 0, token2, sizeof token2), MDG_EINVAL);
    CHECK_RC(mdg_identity_invite(id, "a b@example.org", 0, token2, sizeof token2), MDG_EINVAL);
    CHECK_RC(mdg_identity_invite(id, "a\n@example.org", 0, token2, sizeof token2), MDG_EINVAL);

    /* Bad input first: nothing changes. */
    CHECK_RC(mdg_identity_confirm(id, "short", pk), MDG_EINVAL);
    CHECK(last_error_has("malformed token"));
    CHECK_RC(mdg_identity_confirm(id, "has spaces in it, so no token", pk), MDG_EINVAL);
    CHECK_RC(mdg_identity_confirm(id, NULL, pk), MDG_EINVAL);
    CHECK_RC(mdg_identity_confirm(id, token, zero), MDG_EINVAL);
    CHECK_RC(mdg_identity_confirm(id, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", pk), MDG_ENOTFOUND);
    CHECK(last_error_has("unknown token"));
    CHECK(mdg_identity_role(id, pk, NULL) == MDG_ROLE_NONE);

    /* The real thing, once. */
    CHECK_RC(mdg_identity_confirm(id, token, pk), 0);
    CHECK(mdg_identity_role(id, pk, &cfg) == MDG_ROLE_USER);
    CHECK(cfg && strcmp(cfg, "{}") == 0);
    free(cfg);
    CHECK_RC(mdg_identity_confirm(id, token, pk2), MDG_ESTATE);
    CHECK(last_error_has("already been used"));
    CHECK(mdg_identity_role(id, pk2, NULL) == MDG_ROLE_NONE);

    /* A key cannot be registered twice; the invitation survives. */
    CHECK_RC(mdg_identity_invite(id, "bob@example.org", 0, token2, sizeof token2), 0);
    CHECK(strcmp(token, token2) != 0);
    CHECK_RC(mdg_identity_confirm(id, token2, pk), MDG_ESTATE);
    CHECK(last_error_has("already registered"));
    CHECK_RC(mdg_identity_confirm(id, token2, pk3), 0);
    CHECK(mdg_identity_role(id, pk3, NULL) == MDG_ROLE_USER);
}

static void test_expiry(mdg_identity *id)
{
    char token[MDG_TOKEN_LEN + 1];
    uint8_t pk[32];
    new_key(pk);
    CHECK_RC(mdg_identity_invite(id, "late@example.org", 1, token, sizeof token), 0);
    usleep(2100 * 1000);
    CHECK_RC(mdg_identity_confirm(id, token, pk), MDG_ETIMEDOUT);
    CHECK(last_error_has("expired"));
    CHECK(mdg_identity_role(id, pk, NULL) == MDG_ROLE_NONE);
    CHECK_RC(mdg_identity_invite(id, "x@example.org", (int64_t)1000 * 365 * 24 * 3600, token,
                                 sizeof token),
             MDG_EINVAL);
}

/* ------------------------------------------------ nodes, revocation, list */

typedef struct revoked_seen {
    uint8_t pk[8][32];
    int n;
} revoked_seen;

static void on_revoked(const uint8_t pk[32], void *arg)
{
    revoked_seen *r = arg;
    if (r->n < 8)
        memcpy(r->pk[r->n], pk, 32);
    r->n++;
}

typedef struct list_counts {
    int users, nodes, pending, revoked, stop_after, seen;
    bool has_named_node;
} list_counts;

static int count_entry(const mdg_identity_entry *e, void *arg)
{
    list_counts *c = arg;
    c->seen++;
    if (e->kind == MDG_ENTRY_USER)
        c->users++;
    if (e->kind == MDG_ENTRY_NODE) {
        c->nodes++;
        if (strcmp(e->name, "divider") == 0 && e->pk_b64 && strlen(e->pk_b64) == 44)
            c->has_named_node = true;
    }
    if (e->kind == MDG_ENTRY_PENDING) {
        c->pending++;
        CHECK(e->ref && strlen(e->ref) == 8 && e->expires > e->created && !e->pk_b64);
    }
    if (e->revoked)
        c->revoked++;
    return c->stop_after && c->seen >= c->stop_after ? 7 : 0;
}

static void test_nodes_and_revocation(mdg_identity *id)
{
    uint8_t node[32], user[32], stranger[32];
    int64_t cursor = 0, end = -1;
    revoked_seen seen = {0};
    char *cfg = NULL;

    new_key(node);
    new_key(user);
    new_key(stranger);

    /* Where the log stands before this test's revocations. */
    CHECK_RC(mdg_identity_revoked_since(id, &end, NULL, NULL), 0);
    CHECK(end >= 0);
    cursor = end;

    CHECK_RC(mdg_identity_add_node(id, "divider", node, "{\"cores\":4}"), 0);
    CHECK(mdg_identity_role(id, node, &cfg) == MDG_ROLE_NODE);
    CHECK(cfg && strstr(cfg, "cores"));
    free(cfg);
    CHECK_RC(mdg_identity_add_node(id, "again", node, NULL), MDG_ESTATE);
    CHECK_RC(mdg_identity_add_user(id, "n@example.org", node, NULL), MDG_ESTATE);
    CHECK_RC(mdg_identity_add_node(id, "bad", stranger, "{not json"), MDG_EINVAL);
    CHECK(last_error_has("JSON"));
    CHECK(mdg_identity_role(id, stranger, NULL) == MDG_ROLE_NONE);
    CHECK_RC(mdg_identity_add_node(id, NULL, stranger, NULL), 0); /* nameless is fine */
    CHECK_RC(mdg_identity_add_user(id, "carol@example.org", user, "[1,2]"), 0);
    CHECK(mdg_identity_role(id, user, NULL) == MDG_ROLE_USER);

    /* Revocation: refused from now on, kept in the table, logged in order. */
    CHECK_RC(mdg_identity_revoke(id, user), 0);
    CHECK(mdg_identity_role(id, user, NULL) == MDG_ROLE_NONE);
    CHECK_RC(mdg_identity_revoke(id, user), MDG_ESTATE);
    CHECK(last_error_has("already revoked"));
    CHECK_RC(mdg_identity_revoke(id, node), 0);
    CHECK(mdg_identity_role(id, node, NULL) == MDG_ROLE_NONE);
    uint8_t unknown[32];
    new_key(unknown);
    CHECK_RC(mdg_identity_revoke(id, unknown), MDG_ENOTFOUND);
    /* A revoked key cannot come back through a new invitation. */
    char token[MDG_TOKEN_LEN + 1];
    CHECK_RC(mdg_identity_invite(id, "carol@example.org", 0, token, sizeof token), 0);
    CHECK_RC(mdg_identity_confirm(id, token, user), MDG_ESTATE);
    CHECK(mdg_identity_role(id, user, NULL) == MDG_ROLE_NONE);

    CHECK_RC(mdg_identity_revoked_since(id, &cursor, on_revoked, &seen), 0);
    CHECK(seen.n == 2);
    CHECK(memcmp(seen.pk[0], user, 32) == 0 && memcmp(seen.pk[1], node, 32) == 0);
    CHECK(cursor > end);
    seen.n = 0;
    CHECK_RC(mdg_identity_revoked_since(id, &cursor, on_revoked, &seen), 0);
    CHECK(seen.n == 0);
    CHECK_RC(mdg_identity_revoke(id, stranger), 0);
    CHECK_RC(mdg_identity_revoked_since(id, &cursor, on_revoked, &seen), 0);
    CHECK(seen.n == 1 && memcmp(seen.pk[0], stranger, 32) == 0);
    /* From zero: everything ever revoked. */
    int64_t from_zero = 0;
    seen.n = 0;
    CHECK_RC(mdg_identity_revoked_since(id, &from_zero, on_revoked, &seen), 0);
    CHECK(seen.n >= 3 && from_zero == cursor);
    /* fn NULL: straight to the end. */
    int64_t skip = 0;
    CHECK_RC(mdg_identity_revoked_since(id, &skip, NULL, NULL), 0);
    CHECK(skip == cursor);

    list_counts c = {0};
    CHECK_RC(mdg_identity_list(id, count_entry, &c), 0);
    CHECK(c.users >= 3 && c.nodes == 2 && c.pending >= 1 && c.revoked == 3);
    CHECK(c.has_named_node);
    list_counts stop = {.stop_after = 2};
    CHECK_RC(mdg_identity_list(id, count_entry, &stop), 7);
    CHECK(stop.seen == 2);
}

/* ------------------------------------------------------------ concurrency */

#define THREADS 6
#define TOKENS 12
#define INVITES_PER_THREAD 10

typedef struct race {
    mdg_identity *shared;
    const char *dir;
    char tokens[TOKENS][MDG_TOKEN_LEN + 1];
    uint8_t keys[THREADS][TOKENS][32];
    atomic_int wins[TOKENS];
    atomic_int errors; /* anything but 0 or "already used" */
    atomic_int invited;
    pthread_barrier_t go;
    int index[THREADS];
    char invite_tokens[THREADS][INVITES_PER_THREAD][MDG_TOKEN_LEN + 1];
} race;

static race R;

static void *racer(void *arg)
{
    int t = *(int *)arg;
    mdg_identity *own = NULL, *id = R.shared;
    /* Odd threads use their own handle: separate SQLite connections. */
    if (t % 2 && mdg_identity_open(&own, R.dir) == 0)
        id = own;
    pthread_barrier_wait(&R.go);
    for (int i = 0; i < INVITES_PER_THREAD; i++)
        if (mdg_identity_invite(id, "race@example.org", 0, R.invite_tokens[t][i],
                                MDG_TOKEN_LEN + 1) == 0)
            atomic_fetch_add(&R.invited, 1);
    for (int k = 0; k < TOKENS; k++) {
        int kk = (k + t) % TOKENS; /* threads start on different tokens */
        int rc = mdg_identity_confirm(id, R.tokens[kk], R.keys[t][kk]);
        if (rc == 0)
            atomic_fetch_add(&R.wins[kk], 1);
        else if (rc != MDG_ESTATE) {
            fprintf(stderr, "  racer %d: %s\n", t, mdg_last_error());
            atomic_fetch_add(&R.errors, 1);
        }
        /* Lookups run alongside the writers. */
        if (mdg_identity_role(id, R.keys[t][kk], NULL) < 0)
            atomic_fetch_add(&R.errors, 1);
    }
    mdg_identity_destroy(&own);
    return NULL;
}

static void test_concurrency(mdg_identity *id, const char *dir)
{
    pthread_t th[THREADS];
    R.shared = id;
    R.dir = dir;
    for (int k = 0; k < TOKENS; k++)
        CHECK_RC(mdg_identity_invite(id, "race@example.org", 0, R.tokens[k], MDG_TOKEN_LEN + 1), 0);
    for (int t = 0; t < THREADS; t++)
        for (int k = 0; k < TOKENS; k++)
            new_key(R.keys[t][k]);
    pthread_barrier_init(&R.go, NULL, THREADS);
    for (int t = 0; t < THREADS; t++) {
        R.index[t] = t;
        pthread_create(&th[t], NULL, racer, &R.index[t]);
    }
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    pthread_barrier_destroy(&R.go);

    CHECK(atomic_load(&R.errors) == 0);
    CHECK(atomic_load(&R.invited) == THREADS * INVITES_PER_THREAD);
    for (int k = 0; k < TOKENS; k++) {
        int winners = 0;
        for (int t = 0; t < THREADS; t++)
            winners += mdg_identity_role(id, R.keys[t][k], NULL) == MDG_ROLE_USER;
        CHECK(atomic_load(&R.wins[k]) == 1);
        CHECK(winners == 1);
    }
    /* Every concurrent invitation got its own token, and each works. */
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < INVITES_PER_THREAD; i++)
            for (int u = t; u < THREADS; u++)
                for (int j = (u == t ? i + 1 : 0); j < INVITES_PER_THREAD; j++)
                    if (strcmp(R.invite_tokens[t][i], R.invite_tokens[u][j]) == 0)
                        CHECK(!"duplicate token");
    uint8_t pk[32];
    new_key(pk);
    CHECK_RC(mdg_identity_confirm(id, R.invite_tokens[THREADS - 1][INVITES_PER_THREAD - 1], pk), 0);
}

/* ---------------------------------------------------- both backends alike */

static void test_store(mdg_identity *id, const char *location)
{
    test_invitations(id);
    test_nodes_and_revocation(id);
    test_concurrency(id, location);
    test_expiry(id);
}

/* ------------------------------------------------------------- bad stores */
#ifndef MDG_TEST_PG

/* A row of the revocation log edited by hand to name no key: passed over,
 * and the cursor goes past it (not re-read at every poll). */
static void test_revocation_log_bad_row(void)
{
    char dir[256], db[300];
    uint8_t pk[32];
    int64_t cursor = 0;
    revoked_seen seen = {0};
    mdg_identity *id = NULL;
    sqlite3 *s = NULL;

    path_in(dir, sizeof dir, "badrow");
    snprintf(db, sizeof db, "%s/%s", dir, MDG_IDENTITY_DB_FILE);
    CHECK_RC(mdg_identity_open(&id, dir), 0);
    new_key(pk);
    CHECK_RC(mdg_identity_add_user(id, "r@example.org", pk, NULL), 0);
    CHECK_RC(mdg_identity_revoke(id, pk), 0);
    CHECK(sqlite3_open(db, &s) == SQLITE_OK);
    CHECK(sqlite3_exec(s, "INSERT INTO revocations (pk, at) VALUES ('not a key', 0)", NULL, NULL,
                       NULL) == SQLITE_OK);
    sqlite3_close(s);
    int last = count_rows(db, "SELECT max(seq) FROM revocations");

    CHECK_RC(mdg_identity_revoked_since(id, &cursor, on_revoked, &seen), 0);
    CHECK(seen.n == 1 && memcmp(seen.pk[0], pk, 32) == 0);
    CHECK(last > 0 && cursor == last);
    mdg_identity_destroy(&id);
}

static void test_bad_stores(void)
{
    char dir[256], db[300];
    mdg_identity *id = NULL;
    int fd;

    /* Garbage where the database should be. */
    path_in(dir, sizeof dir, "corrupt");
    CHECK(mkdir(dir, 0700) == 0);
    snprintf(db, sizeof db, "%s/%s", dir, MDG_IDENTITY_DB_FILE);
    fd = open(db, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    char junk[8192];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)("this is not a database "[i % 23] ^ (i & 0x20));
    CHECK(write(fd, junk, sizeof junk) == (ssize_t)sizeof junk);
    close(fd);
    CHECK_RC(mdg_identity_open(&id, dir), MDG_EIO);
    CHECK(last_error_has("corrupt or not an SQLite database"));
    CHECK(last_error_has(db));
    CHECK(id == NULL);

    /* A database whose header survived but whose pages did not. */
    path_in(dir, sizeof dir, "truncated");
    CHECK_RC(mdg_identity_open(&id, dir), 0);
    mdg_identity_destroy(&id);
    snprintf(db, sizeof db, "%s/%s", dir, MDG_IDENTITY_DB_FILE);
    fd = open(db, O_WRONLY);
    CHECK(fd >= 0 && pwrite(fd, junk, 4096 - 100, 100) == 4096 - 100);
    close(fd);
    int rc = mdg_identity_open(&id, dir);
    CHECK(rc == MDG_EIO);
    CHECK(last_error_has("corrupt"));
    CHECK(last_error_has(db));
    mdg_identity_destroy(&id);

    /* A file where the state directory should be. */
    path_in(dir, sizeof dir, "a-file");
    fd = open(dir, O_WRONLY | O_CREAT, 0600);
    CHECK(fd >= 0);
    close(fd);
    CHECK_RC(mdg_identity_open(&id, dir), MDG_EIO);
    CHECK(last_error_has("not a directory"));

    /* A missing parent. */
    path_in(dir, sizeof dir, "no/such/parent");
    CHECK_RC(mdg_identity_open(&id, dir), MDG_EIO);
    CHECK(last_error_has("cannot create state directory"));

    /* The database file is a directory. */
    path_in(dir, sizeof dir, "dbdir");
    CHECK(mkdir(dir, 0700) == 0);
    snprintf(db, sizeof db, "%s/%s", dir, MDG_IDENTITY_DB_FILE);
    CHECK(mkdir(db, 0700) == 0);
    CHECK_RC(mdg_identity_open(&id, dir), MDG_EIO);
    CHECK(last_error_has("not a regular file"));

    /* A read-only database. Root ignores permission bits, so as root the
     * file is made immutable (FS_IMMUTABLE_FL, as chattr +i), which binds
     * root too; otherwise plain chmod does. */
    path_in(dir, sizeof dir, "readonly");
    CHECK_RC(mdg_identity_open(&id, dir), 0);
    mdg_identity_destroy(&id);
    snprintf(db, sizeof db, "%s/%s", dir, MDG_IDENTITY_DB_FILE);
    bool made_readonly = false, immutable = false;
    if (geteuid() != 0) {
        made_readonly = chmod(db, 0400) == 0;
    } else {
        fd = open(db, O_RDONLY);
        int flags = 0;
        if (fd >= 0 && ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0) {
            flags |= FS_IMMUTABLE_FL;
            immutable = made_readonly = ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0;
        }
        if (fd >= 0)
            close(fd);
    }
    if (made_readonly) {
        CHECK_RC(mdg_identity_open(&id, dir), MDG_EIO);
        CHECK(last_error_has("read-only"));
        CHECK(id == NULL);
    } else {
        printf("note: cannot make a file read-only for root here (no FS_IMMUTABLE_FL "
               "support): read-only database case not run\n");
    }
    if (immutable) {
        fd = open(db, O_RDONLY);
        int flags = 0;
        if (fd >= 0 && ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0) {
            flags &= ~FS_IMMUTABLE_FL;
            CHECK(ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0);
        }
        if (fd >= 0)
            close(fd);
    }
}

int main(void)
{
    char dir[256];
    mdg_identity *id = NULL;

    t_capture_log();
    if (!mkdtemp(base)) {
        perror("mkdtemp");
        return 2;
    }
    test_open();
    test_legacy_migration();

    path_in(dir, sizeof dir, "main");
    if (mdg_identity_open(&id, dir) != 0) {
        fprintf(stderr, "cannot open the store: %s\n", mdg_last_error());
        return 2;
    }
    test_store(id, dir);
    mdg_identity_destroy(&id);
    test_bad_stores();
    test_revocation_log_bad_row();

    t_rm_tree(base);
    return t_done("test_identity");
}

#else /* MDG_TEST_PG */

/* Open, create only when asked, reopen, two handles, a newer schema. */
static void test_pg_open(const t_pg *pg)
{
    char uri[256], out[64];
    uint8_t pk[32];
    mdg_identity *id = NULL, *a = NULL, *b = NULL;

    if (t_pg_new_db(pg, "open", uri, sizeof uri) != 0) {
        CHECK(!"cannot make a database");
        return;
    }
    /* An empty database is not a store: a wrong URI must not become one. */
    CHECK_RC(mdg_identity_open_ex(&id, uri, 0), MDG_ENOENT);
    CHECK(last_error_has("no identity store"));
    CHECK(id == NULL);
    CHECK(t_pg_exec(uri, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", out,
                    sizeof out) == 0 &&
          strcmp(out, "0") == 0);
    CHECK_RC(mdg_identity_open_ex(&id, uri, MDG_IDENTITY_CREATE), 0);
    CHECK(t_pg_exec(uri, "SELECT version FROM messidge_schema", out, sizeof out) == 0 &&
          atoi(out) == MDG_IDENTITY_SCHEMA);
    new_key(pk);
    CHECK_RC(mdg_identity_add_user(id, "keep@example.org", pk, NULL), 0);
    mdg_identity_destroy(&id);
    for (int i = 0; i < 3; i++) {
        CHECK_RC(mdg_identity_open_ex(&id, uri, 0), 0);
        CHECK(mdg_identity_role(id, pk, NULL) == MDG_ROLE_USER);
        mdg_identity_destroy(&id);
    }
    CHECK(t_pg_exec(uri, "SELECT count(*) FROM users", out, sizeof out) == 0 &&
          strcmp(out, "1") == 0);
    CHECK_RC(mdg_identity_open(&a, uri), 0);
    CHECK_RC(mdg_identity_open(&b, uri), 0);
    CHECK(mdg_identity_role(b, pk, NULL) == MDG_ROLE_USER);
    mdg_identity_destroy(&a);
    mdg_identity_destroy(&b);

    /* A schema from the future is refused. */
    CHECK(t_pg_exec(uri, "UPDATE messidge_schema SET version = 99", NULL, 0) == 0);
    CHECK_RC(mdg_identity_open(&id, uri), MDG_EPROTO);
    CHECK(last_error_has("schema version 99"));
    CHECK(id == NULL);
}

/* Concurrent first opens with MDG_IDENTITY_CREATE: one makes the tables,
 * the others wait and find them. */
static void *opener(void *arg)
{
    mdg_identity *id = NULL;
    intptr_t rc = mdg_identity_open((mdg_identity **)&id, arg);
    mdg_identity_destroy(&id);
    return (void *)rc;
}

static void test_pg_create_race(const t_pg *pg)
{
    char uri[256];
    pthread_t th[4];
    if (t_pg_new_db(pg, "race", uri, sizeof uri) != 0) {
        CHECK(!"cannot make a database");
        return;
    }
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, opener, uri);
    for (int i = 0; i < 4; i++) {
        void *rc;
        pthread_join(th[i], &rc);
        CHECK((intptr_t)rc == 0);
    }
}

static void test_pg_bad(const t_pg *pg)
{
    char uri[256];
    mdg_identity *id = NULL;

    CHECK_RC(mdg_identity_open(&id, "postgresql://[::1/db"), MDG_EIO);
    CHECK(last_error_has("invalid PostgreSQL connection URI"));
    CHECK_RC(mdg_identity_open(&id, "postgresql://localhost/db?nosuchoption=1"), MDG_EIO);
    CHECK(last_error_has("invalid PostgreSQL connection URI"));
    /* Nothing listens there: refused at once. */
    snprintf(uri, sizeof uri, "postgresql://messidge@127.0.0.1:%d/x", t_free_port());
    CHECK_RC(mdg_identity_open(&id, uri), MDG_EIO);
    CHECK(last_error_has("cannot connect to identity database"));
    CHECK(last_error_has("127.0.0.1"));
    /* A database that is not there, and no password shown in messages. */
    snprintf(uri, sizeof uri, "postgresql://messidge:secret@127.0.0.1:%d/nosuchdb", pg->port);
    CHECK_RC(mdg_identity_open(&id, uri), MDG_EIO);
    CHECK(last_error_has("nosuchdb"));
    CHECK(strstr(mdg_last_error(), "secret") == NULL);
    CHECK(id == NULL);
}

int main(void)
{
    char uri[256];
    mdg_identity *id = NULL;
    t_pg pg;

    t_capture_log();
    if (t_pg_start(&pg) != 0) {
        fprintf(stderr, "test_identity_pg: cannot start a PostgreSQL server (see above)\n");
        return 1;
    }
    test_pg_open(&pg);
    test_pg_create_race(&pg);
    test_pg_bad(&pg);
    if (t_pg_new_db(&pg, "main", uri, sizeof uri) != 0 || mdg_identity_open(&id, uri) != 0) {
        fprintf(stderr, "cannot open the store: %s\n", mdg_last_error());
        t_pg_stop(&pg);
        return 1;
    }
    test_store(id, uri);
    mdg_identity_destroy(&id);
    t_pg_stop(&pg);
    return t_done("test_identity_pg");
}
#endif
