/* identity_pg.c - the identity store's PostgreSQL backend, chosen by a
 * postgresql:// (or postgres://) connection URI in libpq's own syntax, so
 * that several brokers share one store: opening it (connections, schema
 * version, migrations) and reading it (the ZAP lookup, listing, the
 * revocation log). Changes are identity_pg_changes.c's; the listening
 * connection that tells a broker of revocations is identity_pg_listen.c's.
 *
 * Schema version 1, the same tables and meaning as SQLite's (see
 * identity_sqlite.c), in the connection's current schema (search_path:
 * options=-csearch_path%3DNAME in the URI puts them elsewhere):
 *
 *   messidge_schema (version)        -- one row: the schema version
 *   users       (id, pk, email, config, created, revoked, token_hash)
 *   nodes       (id, pk, name, config, created, revoked)
 *   pending     (token_hash, email, created, expires)
 *   revocations (seq, pk, at)        -- append-only log for live brokers
 *
 * config is of type json (PostgreSQL keeps the text as given and checks
 * it); times are unix seconds (bigint). Version 0 is a database without
 * messidge_schema: tables are made there only when the caller asked for
 * MDG_IDENTITY_CREATE. Schema changes run in one transaction under an
 * advisory lock, so concurrent openers wait and then find the work done. */
#include "identity_pg.h"

#include <stdlib.h>
#include <string.h>

#define RESET_EVERY_MS 1000

/* ----------------------------------------------------------------- helpers */

void pg_conn_params(const char *uri, const char *name, const char **kw, const char **val)
{
    int i = 0;
    /* A server that does not answer fails the open, rather than hang it. */
    kw[i] = "connect_timeout", val[i++] = "10";
    kw[i] = "fallback_application_name", val[i++] = name;
    /* A server gone silently (host down, cable cut) is noticed in about
     * 20 s rather than the kernel's two hours. */
    kw[i] = "keepalives_idle", val[i++] = "10";
    kw[i] = "keepalives_interval", val[i++] = "3";
    kw[i] = "keepalives_count", val[i++] = "3";
    kw[i] = "dbname", val[i++] = uri; /* expanded: its settings override the above */
    kw[i] = NULL, val[i] = NULL;
}

const char *pg_message(const char *m, char *buf, size_t len)
{
    size_t n = 0;
    bool space = false;
    for (const char *p = m && *m ? m : "unknown error"; *p && n + 1 < len; p++) {
        bool ws = *p == '\n' || *p == '\t' || *p == '\r' || *p == ' ';
        if (ws) {
            space = n > 0;
            continue;
        }
        if (space && n + 2 < len)
            buf[n++] = ' ';
        space = false;
        buf[n++] = *p;
    }
    buf[n] = '\0';
    return buf;
}

/* Notices (e.g. "relation already exists, skipping") are not errors. */
static void quiet_notice(void *arg, const char *message)
{
    char buf[512];
    (void)arg;
    mdg_log(MDG_LOG_DEBUG, "identity database: %s", pg_message(message, buf, sizeof buf));
}

int pg_connect(const mdg_identity *id, const char *name, PGconn **out)
{
    const char *kw[8], *val[8];
    char buf[512];
    pg_conn_params(pg_of(id)->uri, name, kw, val);
    PGconn *c = *out = PQconnectdbParams(kw, val, 1);
    if (!c)
        return mdg_fail(MDG_ENOMEM, "cannot connect to identity database %s: out of memory",
                        id->where);
    if (PQstatus(c) != CONNECTION_OK) {
        int rc = mdg_fail(MDG_EIO, "cannot connect to identity database %s: %s", id->where,
                          pg_message(PQerrorMessage(c), buf, sizeof buf));
        PQfinish(c);
        *out = NULL;
        return rc;
    }
    PQsetNoticeProcessor(c, quiet_notice, NULL);
    return 0;
}

bool pg_sqlstate_is(const PGresult *r, const char *state)
{
    const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return s && strcmp(s, state) == 0;
}

int64_t pg_get_int64(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* When a unit of work may make a broken connection again: at most once
 * per RESET_EVERY_MS for each, so that while the server cannot be reached
 * a caller (the broker's loop, for a lookup) is not held for libpq's
 * connect_timeout at every call; in between, calls fail at once. */
static bool may_reset(const mdg_identity *id, PGconn *c)
{
    pg_store *s = pg_of(id);
    int64_t *at = c == s->rd ? &s->rd_reset_ms : c == s->wr ? &s->wr_reset_ms : NULL;
    int64_t now = mdg_now_ms();
    if (!at || (*at && now - *at < RESET_EVERY_MS))
        return false;
    *at = now;
    return true;
}

int pg_run(const mdg_identity *id, PGconn *c, const char *sql, int n, const char *const *params,
           const char *what, bool retry, PGresult **out)
{
    char buf[512];
    PGresult *r = NULL;
    if (out)
        *out = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        /* Only where a unit of work begins: a connection that broke since
         * its last use (the server restarted) is made again. Within a
         * transaction a broken connection fails the unit. */
        if (retry && PQstatus(c) == CONNECTION_BAD) {
            if (!may_reset(id, c)) {
                int rc = mdg_fail(MDG_EIO, "identity database %s: %s: the connection is lost (%s)",
                                  id->where, what, pg_message(PQerrorMessage(c), buf, sizeof buf));
                return rc;
            }
            PQreset(c);
        }
        PQclear(r);
        r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
        ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
        if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
            if (out)
                *out = r;
            else
                PQclear(r);
            return 0;
        }
        if (!retry || PQstatus(c) != CONNECTION_BAD)
            break;
    }
    int rc = mdg_fail(MDG_EIO, "identity database %s: %s: %s", id->where, what,
                      pg_message(r ? PQresultErrorMessage(r) : PQerrorMessage(c), buf, sizeof buf));
    if (out)
        *out = r;
    else
        PQclear(r);
    return rc;
}

/* ----------------------------------------------------------------- schema */

static const char schema_v1[] =
    "CREATE TABLE messidge_schema (version integer NOT NULL);"
    "INSERT INTO messidge_schema VALUES (0);"
    "CREATE TABLE users ("
    "  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    "  pk text NOT NULL UNIQUE CHECK (length(pk) = 44),"
    "  email text NOT NULL,"
    "  config json NOT NULL DEFAULT '{}',"
    "  created bigint NOT NULL,"
    "  revoked bigint,"
    "  token_hash text UNIQUE);"
    "CREATE TABLE nodes ("
    "  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    "  pk text NOT NULL UNIQUE CHECK (length(pk) = 44),"
    "  name text NOT NULL,"
    "  config json NOT NULL DEFAULT '{}',"
    "  created bigint NOT NULL,"
    "  revoked bigint);"
    "CREATE TABLE pending ("
    "  token_hash text PRIMARY KEY,"
    "  email text NOT NULL,"
    "  created bigint NOT NULL,"
    "  expires bigint NOT NULL);"
    "CREATE TABLE revocations ("
    "  seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    "  pk text NOT NULL,"
    "  at bigint NOT NULL);";

/* Migration 0 -> 1: the tables, in an empty database. */
static int create_v1(mdg_identity *id, PGconn *c)
{
    char buf[512];
    /* Several statements, no parameters: PQexec takes them at once. */
    PGresult *r = PQexec(c, schema_v1);
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK
                 ? 0
                 : mdg_fail(MDG_EIO, "identity database %s: cannot create the tables: %s",
                            id->where, pg_message(PQresultErrorMessage(r), buf, sizeof buf));
    PQclear(r);
    return rc;
}

/* pg_migrations[v] takes the schema from version v to v + 1. */
static int (*const pg_migrations[MDG_IDENTITY_SCHEMA])(mdg_identity *, PGconn *) = {create_v1};

/* The schema's version, 0 when there is no messidge_schema table. */
static int schema_version(mdg_identity *id, PGconn *c, int *version)
{
    PGresult *r;
    int rc = pg_run(id, c, "SELECT to_regclass('messidge_schema') IS NOT NULL", 0, NULL,
                    "cannot read the schema version", false, &r);
    bool exists = rc == 0 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    *version = 0;
    if (rc || !exists)
        return rc;
    if ((rc = pg_run(id, c, "SELECT coalesce(max(version), 0) FROM messidge_schema", 0, NULL,
                     "cannot read the schema version", false, &r)) == 0)
        *version = (int)pg_get_int64(r, 0, 0);
    PQclear(r);
    return rc;
}

/* Check the schema and bring it up to date, in one transaction. */
static int migrate(mdg_identity *id, unsigned flags)
{
    PGconn *c = pg_of(id)->wr;
    char v[16];
    int version, rc;

    if ((rc = pg_run(id, c, "BEGIN", 0, NULL, "cannot begin the schema check", false, NULL)) ||
        (rc = pg_run(id, c, "SELECT pg_advisory_xact_lock(hashtext('messidge_schema'))", 0, NULL,
                     "cannot lock the schema", false, NULL)) ||
        (rc = schema_version(id, c, &version)))
        goto fail;
    if (version > MDG_IDENTITY_SCHEMA || version < 0) {
        rc = mdg_fail(MDG_EPROTO,
                      "identity database %s has schema version %d; this library knows "
                      "versions up to %d (made by a newer libmessidge?)",
                      id->where, version, MDG_IDENTITY_SCHEMA);
        goto fail;
    }
    if (version == 0 && !(flags & MDG_IDENTITY_CREATE)) {
        rc = mdg_fail(MDG_ENOENT,
                      "no identity store in %s (no messidge_schema table): a wrong database, "
                      "or make one with MDG_IDENTITY_CREATE (messidge-admin --create)",
                      id->where);
        goto fail;
    }
    if (version == MDG_IDENTITY_SCHEMA)
        return pg_run(id, c, "COMMIT", 0, NULL, "cannot end the schema check", false, NULL);
    for (int from = version; from < MDG_IDENTITY_SCHEMA; from++) {
        if ((rc = pg_migrations[from](id, c)) != 0)
            goto fail;
        mdg_log(MDG_LOG_INFO, "identity database %s: schema %d -> %d", id->where, from, from + 1);
    }
    snprintf(v, sizeof v, "%d", MDG_IDENTITY_SCHEMA);
    const char *p[] = {v};
    if ((rc = pg_run(id, c, "UPDATE messidge_schema SET version = $1", 1, p,
                     "cannot set the schema version", false, NULL)) ||
        (rc = pg_run(id, c, "COMMIT", 0, NULL, "cannot commit the schema", false, NULL)))
        goto fail;
    return 0;
fail:
    PQclear(PQexec(c, "ROLLBACK"));
    return rc;
}

/* id->where: the URI without its password or options, for messages. */
static int describe(mdg_identity *id, const char *uri)
{
    char *err = NULL, buf[512];
    const char *host = NULL, *port = NULL, *user = NULL, *db = NULL;
    PQconninfoOption *opts = PQconninfoParse(uri, &err);
    if (!opts) {
        int rc = mdg_fail(MDG_EIO, "invalid PostgreSQL connection URI: %s",
                          err ? pg_message(err, buf, sizeof buf) : "out of memory");
        PQfreemem(err);
        return rc;
    }
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val)
            continue;
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
        else if (strcmp(o->keyword, "user") == 0)
            user = o->val;
        else if (strcmp(o->keyword, "dbname") == 0)
            db = o->val;
    }
    snprintf(id->where, sizeof id->where, "postgresql://%s%s%s%s%s/%s", user ? user : "",
             user ? "@" : "", host ? host : "", port ? ":" : "", port ? port : "", db ? db : "");
    PQconninfoFree(opts);
    return 0;
}

/* ---------------------------------------------------------------- lookups */

static int pg_role(mdg_identity *id, const char *b64, char **config_json)
{
    static const char sql[] =
        "SELECT 1, config::text FROM users WHERE pk = $1 AND revoked IS NULL "
        "UNION ALL "
        "SELECT 2, config::text FROM nodes WHERE pk = $1 AND revoked IS NULL LIMIT 1";
    pg_store *s = pg_of(id);
    const char *p[] = {b64};
    PGresult *r;
    int role;

    pthread_mutex_lock(&s->rd_lock);
    role = pg_run(id, s->rd, sql, 1, p, "cannot look up a key", true, &r);
    if (role == 0 && PQntuples(r) == 1) {
        role = (int)pg_get_int64(r, 0, 0);
        if (config_json && !(*config_json = strdup(PQgetvalue(r, 0, 1))))
            role = mdg_fail_plain(MDG_ENOMEM);
    }
    PQclear(r);
    pthread_mutex_unlock(&s->rd_lock);
    return role;
}

static int pg_last_revocation(mdg_identity *id, int64_t *seq)
{
    pg_store *s = pg_of(id);
    PGresult *r;
    pthread_mutex_lock(&s->rd_lock);
    int rc = pg_run(id, s->rd, "SELECT coalesce(max(seq), 0) FROM revocations", 0, NULL,
                    "cannot read the revocations", true, &r);
    if (rc == 0)
        *seq = pg_get_int64(r, 0, 0);
    PQclear(r);
    pthread_mutex_unlock(&s->rd_lock);
    return rc;
}

static int pg_revocations(mdg_identity *id, int64_t after, identity_revocation **rows, size_t *n)
{
    pg_store *s = pg_of(id);
    char a[24];
    const char *p[] = {a};
    size_t cap = 0;
    PGresult *r;

    snprintf(a, sizeof a, "%lld", (long long)after);
    pthread_mutex_lock(&s->rd_lock);
    int rc = pg_run(id, s->rd, "SELECT seq, pk FROM revocations WHERE seq > $1 ORDER BY seq", 1,
                    p, "cannot read the revocations", true, &r);
    for (int i = 0; rc == 0 && i < PQntuples(r); i++)
        rc = identity_rows_push(rows, n, &cap, pg_get_int64(r, i, 0), PQgetvalue(r, i, 1));
    PQclear(r);
    pthread_mutex_unlock(&s->rd_lock);
    if (rc) {
        free(*rows);
        *rows = NULL;
        *n = 0;
    }
    return rc;
}

static int pg_list(mdg_identity *id, int (*fn)(const mdg_identity_entry *e, void *arg), void *arg)
{
    static const struct {
        int kind;
        const char *sql;
    } queries[] = {
        {MDG_ENTRY_USER, "SELECT pk, email, config::text, created, coalesce(revoked, 0), NULL, 0 "
                         "FROM users ORDER BY id"},
        {MDG_ENTRY_NODE, "SELECT pk, name, config::text, created, coalesce(revoked, 0), NULL, 0 "
                         "FROM nodes ORDER BY id"},
        {MDG_ENTRY_PENDING, "SELECT NULL, email, NULL, created, 0, substr(token_hash, 1, 8), "
                            "expires FROM pending ORDER BY created, token_hash"},
    };
    pg_store *s = pg_of(id);
    int rc;

    pthread_mutex_lock(&s->rd_lock);
    /* One snapshot: the three groups are one consistent picture. */
    rc = pg_run(id, s->rd, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL,
                "cannot begin reading", true, NULL);
    for (size_t q = 0; rc == 0 && q < sizeof queries / sizeof queries[0]; q++) {
        PGresult *r;
        if ((rc = pg_run(id, s->rd, queries[q].sql, 0, NULL, "cannot list", false, &r)) != 0) {
            PQclear(r);
            break;
        }
        for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
#define TEXT(col) (PQgetisnull(r, i, col) ? NULL : PQgetvalue(r, i, col))
            mdg_identity_entry e = {
                .kind = queries[q].kind,
                .pk_b64 = TEXT(0),
                .name = TEXT(1) ? TEXT(1) : "",
                .config = TEXT(2),
                .created = pg_get_int64(r, i, 3),
                .revoked = pg_get_int64(r, i, 4),
                .ref = TEXT(5),
                .expires = pg_get_int64(r, i, 6),
            };
#undef TEXT
            rc = fn(&e, arg);
        }
        PQclear(r);
    }
    PQclear(PQexec(s->rd, "COMMIT")); /* or end the failed transaction */
    pthread_mutex_unlock(&s->rd_lock);
    return rc;
}

/* ---------------------------------------------------------------- opening */

static void pg_close(mdg_identity *id)
{
    pg_store *s = pg_of(id);
    if (!s)
        return;
    pg_listener_free(s->listener);
    PQfinish(s->rd);
    PQfinish(s->wr);
    pthread_mutex_destroy(&s->rd_lock);
    pthread_mutex_destroy(&s->wr_lock);
    free(s->uri);
    free(s);
    id->be = NULL;
}

static const identity_ops pg_ops = {
    .close = pg_close,
    .role = pg_role,
    .json_valid = pg_json_valid,
    .invite = pg_invite,
    .confirm = pg_confirm,
    .add_key = pg_add_key,
    .revoke = pg_revoke,
    .last_revocation = pg_last_revocation,
    .revocations = pg_revocations,
    .list = pg_list,
    .attach = pg_attach,
};

int identity_pg_open(mdg_identity *id, const char *uri, unsigned flags)
{
    pg_store *s;
    int rc;

    if (!PQisthreadsafe())
        return mdg_fail(MDG_ESYS, "libpq was built without thread support");
    if ((rc = describe(id, uri)) != 0)
        return rc;
    if (!(s = calloc(1, sizeof *s)) || !(s->uri = strdup(uri))) {
        free(s);
        return mdg_fail_plain(MDG_ENOMEM);
    }
    pthread_mutex_init(&s->rd_lock, NULL);
    pthread_mutex_init(&s->wr_lock, NULL);
    id->be = s;
    id->ops = &pg_ops;
    if ((rc = pg_connect(id, "messidge", &s->wr)) != 0 || (rc = migrate(id, flags)) != 0 ||
        (rc = pg_connect(id, "messidge", &s->rd)) != 0)
        return rc; /* the front closes */
    return 0;
}
