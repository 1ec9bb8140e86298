/* identity_internal.h - what the identity store's files share (not
 * installed): the handle, and the small table of operations each backend
 * fills in.
 *
 *   identity.c                  the front: the public API, every check of
 *                               the caller's input (emails, names, tokens,
 *                               keys, JSON), tokens and their hashes, the
 *                               error texts of every outcome, the choice
 *                               of backend, and attaching to a broker
 *   identity_sqlite.c           SQLite: opening (schema, migrations, its
 *                               reader and writer connections) and reading
 *   identity_sqlite_changes.c   SQLite: every change, one transaction each
 *   identity_pg.c               PostgreSQL (libpq): opening, schema, reading
 *   identity_pg_changes.c       PostgreSQL: every change, one transaction each
 *   identity_pg_listen.c        PostgreSQL: LISTEN for revocations on a
 *                               broker's loop, reconnecting when it drops
 *
 * A backend is handed input the front has checked, and answers 0, an
 * identity_outcome (the front words it), or a negative MDG_E code with the
 * database's reason already in mdg_last_error(). Backends are thread-safe
 * as the header promises (ZAP lookups on the broker's loop thread while
 * the account server's thread confirms). */
#ifndef MDG_IDENTITY_INTERNAL_H
#define MDG_IDENTITY_INTERNAL_H

#include "internal.h"
#include "messidge_identity.h"

#include <limits.h>
#include <pthread.h>
#include <stdint.h>

#define HASH_BYTES 32
#define HASH_B64_LEN 43 /* unpadded URL-safe base64 of HASH_BYTES */
#define MAX_EMAIL 320
#define MAX_NODE_NAME 256

/* What a change found instead of doing it (> 0: not a database failure). */
enum identity_outcome {
    ID_UNKNOWN_TOKEN = 1, /* confirm: no such invitation, ever */
    ID_TOKEN_USED,        /* confirm: the invitation was confirmed already */
    ID_EXPIRED,           /* confirm: the invitation expired */
    ID_KEY_TAKEN,         /* confirm, add: the key is a user or node already */
    ID_NOT_FOUND,         /* revoke: neither a user nor a node */
    ID_ALREADY_REVOKED,   /* revoke */
};

/* One row of the revocation log. */
typedef struct identity_revocation {
    int64_t seq;
    uint8_t pk[MDG_KEY_BYTES]; /* all zeros: the row names no key */
} identity_revocation;

typedef struct identity_ops {
    void (*close)(mdg_identity *id); /* frees id->be (id itself is the front's) */
    /* MDG_ROLE_* and a strdup'ed config (when config is not NULL), or < 0 */
    int (*role)(mdg_identity *id, const char *pk_b64, char **config);
    /* 1 valid, 0 not, < 0 database failure */
    int (*json_valid)(mdg_identity *id, const char *json);
    int (*invite)(mdg_identity *id, const char *hash, const char *email, int64_t now,
                  int64_t expires);
    /* email gets the invitation's address (for the log) on success */
    int (*confirm)(mdg_identity *id, const char *hash, const char *pk_b64, int64_t now,
                   char email[MAX_EMAIL + 1]);
    int (*add_key)(mdg_identity *id, bool node, const char *name, const char *pk_b64,
                   const char *config, int64_t now);
    int (*revoke)(mdg_identity *id, const char *pk_b64, int64_t now);
    /* *seq = the last revocation's number (0 when none) */
    int (*last_revocation)(mdg_identity *id, int64_t *seq);
    /* the revocations after `after`, in order, in a malloc'ed array */
    int (*revocations)(mdg_identity *id, int64_t after, identity_revocation **rows, size_t *n);
    int (*list)(mdg_identity *id, int (*fn)(const mdg_identity_entry *e, void *arg), void *arg);
    /* Close revoked keys' sessions on b as they are revoked. NULL: the
     * front polls the log once a second instead. */
    int (*attach)(mdg_identity *id, mdg_broker *b);
} identity_ops;

struct mdg_identity {
    const identity_ops *ops;
    void *be;              /* the backend's state */
    char where[PATH_MAX];  /* the database, for messages (no password) */
    int64_t revoke_cursor; /* mdg_identity_attach: revocations seen */
};

/* identity.c */
int64_t identity_now(void);
/* The stored form of a token: unpadded URL-safe base64 of its BLAKE2b. */
void identity_token_hash(const char *token, size_t len, char out[HASH_B64_LEN + 1]);
/* Close the sessions of every key revoked after id->revoke_cursor (on the
 * broker's loop thread), advancing the cursor. */
void identity_catch_up(mdg_identity *id, mdg_broker *b);
/* Append a revocation to a growing array (*rows, *n, *cap); a pk_b64
 * that is no key is appended as all zeros. */
int identity_rows_push(identity_revocation **rows, size_t *n, size_t *cap, int64_t seq,
                       const char *pk_b64);

/* The backends' openers: fill id->ops, id->be and id->where. */
int identity_sqlite_open(mdg_identity *id, const char *state_dir, unsigned flags);
int identity_pg_open(mdg_identity *id, const char *uri, unsigned flags);

#endif
