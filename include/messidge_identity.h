/*
 * messidge_identity.h - who may connect: the identity store, the account
 * (invitation) server, and client-side account creation.
 *
 * The flow, as in the original Messidge:
 *
 *   1. the broker's admin invites a user: mdg_identity_invite() (or
 *      `messidge-admin invite EMAIL`) gives a single-use, expiring token;
 *   2. the user runs mdg_create_account() (or `messidge confirm LOCATION
 *      TOKEN`): it makes a key pair and POSTs "TOKEN PUBLIC_KEY" to the
 *      account server on the broker's base port + 1 (2021 by default);
 *   3. the account server confirms the invitation in the identity store
 *      and answers the broker's public key, which the client pins;
 *   4. from then on the broker's ZAP handler admits the key as a user:
 *      mdg_broker_set_auth(b, mdg_identity_auth, id).
 *
 * Nodes are registered directly by the admin (mdg_identity_add_node).
 * Keys can be revoked; revoked keys are refused at the next handshake and
 * mdg_identity_revoked_since() tells a running broker which keys to cut.
 *
 * Conventions are those of messidge.h: 0 or a negative MDG_E... code,
 * detail text in mdg_last_error(), *_destroy(&p) sets p to NULL.
 */
#ifndef MESSIDGE_IDENTITY_H
#define MESSIDGE_IDENTITY_H

#include "messidge.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------- identity store */

/* The store, in one of two databases with the same tables and meaning:
 *
 *   - SQLite (the default): PATH/identity.sqlite3 in a state directory, in
 *     WAL mode; for one broker and the tools on its host. Lookups never
 *     wait for a writer.
 *   - PostgreSQL: a connection URI, postgresql://USER@HOST:PORT/DB (or
 *     postgres://, with anything libpq's URIs take, such as ?sslmode=),
 *     for several brokers sharing one store. The tables live in the
 *     connection's current schema (search_path). A password is best kept
 *     in ~/.pgpass or PGPASSWORD; messages never show it.
 *
 * Thread-safe: one handle may be used from the broker's loop thread (ZAP)
 * and the account server's thread at once, and several processes (brokers,
 * messidge-admin) may open the same store. Every function below behaves
 * alike, with the same error codes and texts, on both. */
typedef struct mdg_identity mdg_identity;

#define MDG_DEFAULT_STATE_DIR "./messidge-state"
#define MDG_IDENTITY_DB_FILE "identity.sqlite3"
/* Current schema version (SQLite: PRAGMA user_version; PostgreSQL: the
 * table messidge_schema). Older databases, including the original Messidge
 * 1.x identity.sqlite3 (version 0 with tables users, nodes, pending), are
 * migrated on open; newer ones are refused. */
#define MDG_IDENTITY_SCHEMA 1

/* Invitation tokens: 24 random bytes as unpadded URL-safe base64. */
#define MDG_TOKEN_BYTES 24
#define MDG_TOKEN_LEN 32
#define MDG_INVITE_DEFAULT_TTL (7 * 24 * 3600) /* seconds */

/* Open (creating if needed) the store at location: a state directory
 * (SQLite; NULL means MDG_DEFAULT_STATE_DIR) or a postgresql:// or
 * postgres:// URI (PostgreSQL). The same as mdg_identity_open_ex(out,
 * location, MDG_IDENTITY_CREATE).
 *
 * SQLite: the directory (only its last component) is made with mode 0700
 * and the database file with 0600. Fails with MDG_EIO and a clear text
 * when the path is not a directory, the database is corrupt or not an
 * SQLite file, or it cannot be written (read-only file or directory).
 * PostgreSQL: the database must exist (the tables are made in it); fails
 * with MDG_EIO and a clear text when the URI is invalid or the server
 * cannot be reached or refuses. Both: MDG_EPROTO when the schema is newer
 * than this library. */
MDG_EXPORT int mdg_identity_open(mdg_identity **out, const char *location);

enum mdg_identity_open_flags {
    /* Make the store when there is none (SQLite: the directory and the
     * database file; PostgreSQL: the tables, in the existing database).
     * Without it a missing store is MDG_ENOENT: a mistyped location should
     * not make an empty store that admits no one. */
    MDG_IDENTITY_CREATE = 1u << 0,
};
/* Open the store at location (as mdg_identity_open) with flags (enum
 * mdg_identity_open_flags). */
MDG_EXPORT int mdg_identity_open_ex(mdg_identity **out, const char *location, unsigned flags);
/* Close the store. Accepts NULL and a pointer to NULL. */
MDG_EXPORT void mdg_identity_destroy(mdg_identity **id);

/* Role of a key: MDG_ROLE_USER, MDG_ROLE_NODE, or MDG_ROLE_NONE when the
 * key is unknown or revoked; < 0 on a database error. When config_json is
 * not NULL and the key has a role, *config_json gets a copy of its config
 * (JSON text) that the caller frees with free(); else it is set to NULL. */
MDG_EXPORT int mdg_identity_role(mdg_identity *id, const uint8_t pk[MDG_KEY_BYTES],
                                 char **config_json);

/* An mdg_auth_fn for mdg_broker_set_auth(b, mdg_identity_auth, id):
 * identity is the mdg_identity (borrowed; it must outlive the broker).
 * Database errors refuse the key (MDG_ROLE_NONE) and are logged. */
MDG_EXPORT int mdg_identity_auth(const uint8_t pk[MDG_KEY_BYTES], void *identity);

/* Make the store the broker's identity, the usual set-up: the broker's ZAP
 * handler admits keys by mdg_identity_auth, and the sessions of keys
 * revoked from then on are closed with the reason "key revoked" (their
 * clients are told), on the broker's loop thread:
 *   - SQLite: the store is asked once a second what was revoked since;
 *   - PostgreSQL: a connection of the store's own LISTENs for the NOTIFY
 *     that every revocation sends, whoever made it, and the broker's loop
 *     watches it: sessions close within moments. If that connection drops
 *     it is made again (logged, with backoff) and what was revoked
 *     meanwhile is read from the store's log. MDG_ESTATE when the store is
 *     attached already (one broker per handle; open one for each).
 * Only revocations made after this call count. Before mdg_broker_start /
 * run; id is borrowed and must outlive the broker. */
MDG_EXPORT int mdg_identity_attach(mdg_identity *id, mdg_broker *b);

/* Invite a user: store a pending invitation for email (non-empty, at most
 * 320 bytes, no spaces or control characters) that expires after
 * ttl_seconds (<= 0: MDG_INVITE_DEFAULT_TTL), and write its token into
 * token (at least MDG_TOKEN_LEN + 1 bytes; NUL-terminated). Only a hash of
 * the token is stored: a copy of the database does not reveal it. */
MDG_EXPORT int mdg_identity_invite(mdg_identity *id, const char *email, int64_t ttl_seconds,
                                   char *token, size_t token_len);

/* Confirm an invitation with the user's key, in one transaction: the
 * pending row is checked and deleted and the user inserted (config "{}"),
 * so of several concurrent confirms with one token exactly one succeeds.
 * Errors, with the reason in mdg_last_error():
 *   MDG_EINVAL     the token is not token-shaped, or the key is all zeros
 *   MDG_ENOTFOUND  unknown token
 *   MDG_ESTATE     the token was already used, or the key is already
 *                  registered (as a user or a node, revoked or not)
 *   MDG_ETIMEDOUT  the invitation expired
 *   MDG_EIO        database failure
 * Nothing is stored on failure. */
MDG_EXPORT int mdg_identity_confirm(mdg_identity *id, const char *token,
                                    const uint8_t pk[MDG_KEY_BYTES]);

/* Register a node (name may be NULL: "") or a user directly, without an
 * invitation. config_json NULL means "{}"; it must be valid JSON
 * (MDG_EINVAL otherwise). A key already registered is MDG_ESTATE. */
MDG_EXPORT int mdg_identity_add_node(mdg_identity *id, const char *name,
                                     const uint8_t pk[MDG_KEY_BYTES], const char *config_json);
MDG_EXPORT int mdg_identity_add_user(mdg_identity *id, const char *email,
                                     const uint8_t pk[MDG_KEY_BYTES], const char *config_json);

/* Revoke a user or node key: it keeps its row, with the time of
 * revocation, and is refused from then on. MDG_ENOTFOUND for an unknown
 * key, MDG_ESTATE when it was already revoked. */
MDG_EXPORT int mdg_identity_revoke(mdg_identity *id, const uint8_t pk[MDG_KEY_BYTES]);

/* For a running broker (mdg_identity_attach uses it): calls fn(pk, arg) for
 * each revocation recorded after *cursor, in order, then advances *cursor.
 * Start with *cursor = 0 to see every revocation ever made, or pass fn
 * NULL once to move the cursor to the present without calls. fn runs on
 * the calling thread with no lock held (it may use the store). */
MDG_EXPORT int mdg_identity_revoked_since(mdg_identity *id, int64_t *cursor,
                                          void (*fn)(const uint8_t pk[MDG_KEY_BYTES], void *arg),
                                          void *arg);

/* One row of mdg_identity_list. Everything is borrowed for the call. */
enum mdg_identity_kind { MDG_ENTRY_USER = 1, MDG_ENTRY_NODE = 2, MDG_ENTRY_PENDING = 3 };
typedef struct mdg_identity_entry {
    int kind;           /* enum mdg_identity_kind */
    const char *pk_b64; /* users and nodes: the key (base64); pending: NULL */
    const char *name;   /* users and pending: the email; nodes: the name */
    const char *config; /* users and nodes: JSON text; pending: NULL */
    const char *ref;    /* pending: a short reference to the invitation
                           (not the token, which is not stored); else NULL */
    int64_t created;    /* unix time, seconds */
    int64_t revoked;    /* users and nodes: unix time, 0 if not revoked */
    int64_t expires;    /* pending: unix time; else 0 */
} mdg_identity_entry;

/* Call fn for every user, then every node, then every pending invitation
 * (oldest first in each group). fn returns 0 to go on, anything else to
 * stop (returned by mdg_identity_list). fn must not call into id. */
MDG_EXPORT int mdg_identity_list(mdg_identity *id,
                                 int (*fn)(const mdg_identity_entry *e, void *arg), void *arg);

/* ---------------------------------------------------------- account server */

#define MDG_DEFAULT_ACCOUNT_PORT (MDG_DEFAULT_PORT + 1) /* 2021 */
/* Largest request body the account server reads. */
#define MDG_ACCOUNT_MAX_BODY 4096

/* The HTTP server that confirms invitations (libmicrohttpd, its own
 * thread). POST / with body "TOKEN PUBLIC_KEY_BASE64" (one space; the key
 * in standard base64, 44 chars; one trailing newline tolerated): on
 * success status 200 and the broker's public key in base64 (44 chars, no
 * newline). Every failure answers a text starting "Fail: " with the reason
 * and a 4xx status (5xx for a database failure), and stores nothing. */
typedef struct mdg_account_server mdg_account_server;

/* Where the server listens and how much it takes; zero means the default
 * for every field but port. A slow or greedy client holds at most
 * max_per_address connections, each for at most request_timeout_ms. */
typedef struct mdg_account_server_options {
    /* an address or host name; NULL or "*" = all IPv4 interfaces */
    const char *bind_address;
    int port; /* 0 picks a free port (see mdg_account_server_port) */
    /* Connections open at once, in all: default 64. Further ones wait in
     * the listen backlog until one closes. */
    int max_connections;
    /* Connections open at once from one client IP address: default 8.
     * Further ones are closed at once, and logged. */
    int max_per_address;
    /* A connection's request must be complete, headers and body, this
     * long after the connection opened: default 5000 ms. Past it the
     * connection is cut (and logged), however busily it trickles bytes.
     * One request per connection (answers say Connection: close). */
    int request_timeout_ms;
} mdg_account_server_options;

/* id is borrowed and must outlive the server; broker_pk and opts are
 * copied (opts NULL: all defaults, every interface, a free port). The
 * server runs once this returns. */
MDG_EXPORT int mdg_account_server_new_opts(mdg_account_server **out, mdg_identity *id,
                                           const uint8_t broker_pk[MDG_KEY_BYTES],
                                           const mdg_account_server_options *opts);
/* The same with the default limits. */
MDG_EXPORT int mdg_account_server_new(mdg_account_server **out, mdg_identity *id,
                                      const uint8_t broker_pk[MDG_KEY_BYTES],
                                      const char *bind_address, int port);
/* The TCP port actually bound. */
MDG_EXPORT int mdg_account_server_port(const mdg_account_server *s);
/* Stop the server (waits for its thread) and free it. Accepts NULL. */
MDG_EXPORT void mdg_account_server_destroy(mdg_account_server **s);

/* ------------------------------------------------- client account creation */

enum mdg_account_flags {
    /* Replace the key pair of an existing account for this location.
     * Without it mdg_create_account refuses (MDG_ESTATE) when PREFIX/LOCATION
     * exists, before contacting the server, so a secret key is never lost. */
    MDG_ACCOUNT_OVERWRITE = 1u << 0,
};

/* Create an account at location (a host name or address, also the key
 * files' name) with an invitation token: make a key pair, POST it to
 * http://LOCATION:PORT/ (port <= 0: MDG_DEFAULT_ACCOUNT_PORT) and on
 * success write, under prefix (NULL = default; see mdg_keys_save):
 * LOCATION and LOCATION.pub (the pair; directory 0700, secret 0600),
 * LOCATION.spub (the broker's key from the answer) and default_location.
 * The HTTP exchange is bounded (5 s to connect, 15 s in all). On failure
 * nothing is written and mdg_last_error() says why:
 *   MDG_EREMOTE    the server refused; the text holds its "Fail: ..." answer
 *   MDG_EIO / MDG_ETIMEDOUT   the server could not be reached (curl's error)
 *   MDG_EPROTO     the answer was not a broker key
 *   MDG_ESTATE     an account for location exists (see the flag)
 *   MDG_EINVAL     bad location or token, or the prefix is not writable */
MDG_EXPORT int mdg_create_account(const char *location, int port, const char *token,
                                  const char *prefix, unsigned flags);

#ifdef __cplusplus
}
#endif
#endif
