/* export_1x.c - see export_1x.h. The 1.x schema, as 1.x made it:
 *   users   (pk TEXT NOT NULL UNIQUE, email TEXT NOT NULL, json BLOB)
 *   nodes   (pk TEXT NOT NULL UNIQUE, json BLOB)
 *   pending (token TEXT NOT NULL UNIQUE, email TEXT NOT NULL)
 * keys as 44 characters of standard base64, json the key's config. */
#include "export_1x.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

static const char schema_1x[] = "CREATE TABLE nodes (pk TEXT NOT NULL UNIQUE, json BLOB);"
                                "CREATE TABLE users (pk TEXT NOT NULL UNIQUE, email TEXT NOT NULL, json BLOB);"
                                "CREATE TABLE pending (token TEXT NOT NULL UNIQUE, email TEXT NOT NULL);";

typedef struct export_state {
    sqlite3_stmt *user, *node;
    int users, nodes, pending, revoked;
    bool failed;
} export_state;

static int export_entry(const mdg_identity_entry *e, void *arg)
{
    export_state *s = arg;
    if (e->kind == MDG_ENTRY_PENDING) {
        s->pending++;
        return 0;
    }
    if (e->revoked) {
        s->revoked++;
        return 0;
    }
    sqlite3_stmt *st = e->kind == MDG_ENTRY_USER ? s->user : s->node;
    const char *config = e->config ? e->config : "{}";
    int i = 1;
    sqlite3_reset(st);
    sqlite3_bind_text(st, i++, e->pk_b64, -1, SQLITE_STATIC);
    if (e->kind == MDG_ENTRY_USER)
        sqlite3_bind_text(st, i++, e->name, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, i, config, (int)strlen(config), SQLITE_STATIC); /* 1.x kept bytes */
    if (sqlite3_step(st) != SQLITE_DONE) {
        s->failed = true;
        return 1;
    }
    (*(e->kind == MDG_ENTRY_USER ? &s->users : &s->nodes))++;
    return 0;
}

int export_1x(mdg_identity *id, const char *path)
{
    export_state s = {0};
    sqlite3 *db = NULL;
    /* a new file only: never over a store (a 1.x one, or ours) */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    close(fd);
    bool ok = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
              sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK &&
              sqlite3_exec(db, schema_1x, NULL, NULL, NULL) == SQLITE_OK &&
              sqlite3_prepare_v2(db, "INSERT INTO users VALUES (?, ?, ?)", -1, &s.user, NULL) == SQLITE_OK &&
              sqlite3_prepare_v2(db, "INSERT INTO nodes VALUES (?, ?)", -1, &s.node, NULL) == SQLITE_OK;
    int rc = ok ? mdg_identity_list(id, export_entry, &s) : 0;
    ok = ok && rc == 0 && !s.failed && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK;
    if (!ok)
        fprintf(stderr, "messidge-admin: cannot export to %s: %s\n", path,
                rc ? mdg_last_error() : db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_finalize(s.user);
    sqlite3_finalize(s.node);
    sqlite3_close(db);
    if (!ok) {
        unlink(path);
        return 1;
    }
    printf("exported %d user(s) and %d node(s) to %s (Messidge 1.x schema)\n", s.users, s.nodes, path);
    if (s.revoked)
        printf("left out %d revoked key(s)\n", s.revoked);
    if (s.pending)
        printf("left out %d pending invitation(s): only their tokens' hashes are stored; invite again "
               "with 1.x\n",
               s.pending);
    return 0;
}
