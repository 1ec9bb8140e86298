/*
 * messidge.h - libmessidge public API.
 *
 * Messidge is a brokered, authenticated and encrypted messaging framework:
 * many users and many nodes connect to one broker over ZeroMQ with CURVE;
 * everything is named by its Curve25519 public key (pk).
 *
 * Conventions (as in nng / CZMQ):
 *  - functions return 0 or a negative MDG_E... code; mdg_strerror() names it
 *    and mdg_last_error() gives a longer, thread-local detail text (which
 *    file, which param, the remote error text...);
 *  - objects are made with *_new() and freed with *_destroy(&p), which
 *    sets p to NULL and accepts NULL / a pointer to NULL. A constructor
 *    that can fail only for want of memory returns the object or NULL
 *    (mdg_params_new); one that can fail for other reasons (a file, a key,
 *    an option) returns 0 or an error code and fills its first argument
 *    (mdg_keys_new(&keys), mdg_broker_new(&b, ...), mdg_conn_new(&c, ...));
 *  - every function says who owns what: "borrowed" results stay owned by
 *    the object they came from, "taken" arguments become the library's
 *    even when the call fails.
 */
#ifndef MESSIDGE_H
#define MESSIDGE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cbor.h>

/* Marks the functions of the public API. The shared library is built with
 * -fvisibility=hidden, so these are all it exports. */
#if defined(__GNUC__) && __GNUC__ >= 4
#define MDG_EXPORT __attribute__((visibility("default")))
#else
#define MDG_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ----------------------------------------------------------------- version */

/* The version of this header: the version a program is compiled against. */
#define MDG_VERSION_MAJOR 0
#define MDG_VERSION_MINOR 1
#define MDG_VERSION_PATCH 0

/* The version of the library the program runs with, "MAJOR.MINOR.PATCH"
 * (e.g. "0.1.0"): with the shared library, the one actually loaded, which
 * may differ from MDG_VERSION_* above. Static text: never NULL, not to be
 * freed. Any thread, at any time (no setup needed). */
MDG_EXPORT const char *mdg_version(void);

/* ------------------------------------------------------------------ errors */

enum mdg_error {
    MDG_OK = 0,
    MDG_EINVAL = -1,     /* bad argument from the application */
    MDG_ENOMEM = -2,     /* out of memory */
    MDG_ENOENT = -3,     /* a file (key, location) does not exist */
    MDG_EBADKEY = -4,    /* a key file or key text is not a valid key */
    MDG_EIO = -5,        /* reading or writing a file failed */
    MDG_ETIMEDOUT = -6,  /* the operation did not finish in time */
    MDG_EREMOTE = -7,    /* the remote handler failed the message; see text */
    MDG_EPROTO = -8,     /* the peer broke the wire protocol */
    MDG_ECLOSED = -9,    /* the connection, broker or session is closed */
    MDG_EAUTH = -10,     /* the broker refused our key */
    MDG_EHANDSHAKE = -11,/* handshake failed: wrong server key, or not our protocol */
    MDG_ENOTFOUND = -12, /* no such param / command / session */
    MDG_ETYPE = -13,     /* a param exists but has another type */
    MDG_ESTATE = -14,    /* call not valid in this state (e.g. after start) */
    MDG_EAGAIN = -15,    /* would block */
    MDG_ESYS = -16,      /* a system or libzmq call failed; see text */
    MDG_EBUSY = -17,     /* the broker is at its connection limit; retried */
};

/* Short fixed text for an error code. Never NULL. */
MDG_EXPORT const char *mdg_strerror(int err);

/* Detail of the last error set by a libmessidge call in this thread
 * (e.g. "cannot read key file /home/u/.messidge/localhost: No such file").
 * Borrowed, valid until the next libmessidge call in this thread. */
MDG_EXPORT const char *mdg_last_error(void);

/* ------------------------------------------------------------------ logging */

enum mdg_log_level { MDG_LOG_ERROR = 0, MDG_LOG_WARN, MDG_LOG_INFO, MDG_LOG_DEBUG };

typedef void (*mdg_log_fn)(int level, const char *text, void *arg);

/* Where library log lines go (process-wide), and up to which level. The
 * default sink (fn NULL) is stderr, one line each as mdg_log_format makes
 * it; max_level < 0 means MDG_LOG_LEVEL from the environment (0..3), else
 * MDG_LOG_WARN. fn may be called from any library thread, one line at a
 * time. Keys in log lines are their first 12 base64 characters. */
MDG_EXPORT void mdg_set_log(mdg_log_fn fn, void *arg, int max_level);
/* The default sink's line for text, newline included:
 *   2026-12-03T10:35:12.123Z PROGRAM[PID] LEVEL: TEXT
 * (UTC, milliseconds; LEVEL error, warn, info or debug), truncated to len.
 * Returns what snprintf does. For a program's own lines in the same form. */
MDG_EXPORT int mdg_log_format(char *buf, size_t len, int level, const char *text);
/* A sink for mdg_set_log that sends each line to syslog(3) (and so to the
 * journal under systemd) at the matching priority; call openlog() first
 * to name the program and facility. arg is unused. */
MDG_EXPORT void mdg_log_syslog(int level, const char *text, void *arg);

/* -------------------------------------------------------------------- keys */

#define MDG_KEY_BYTES 32   /* raw Curve25519 key */
#define MDG_KEY_B64_LEN 44 /* standard base64 with padding, as in key files */

typedef struct mdg_keys mdg_keys; /* a public/secret key pair */

/* New random key pair. */
MDG_EXPORT int mdg_keys_new(mdg_keys **out);
/* Key pair from raw keys, or from base64 text (44 chars each). */
MDG_EXPORT int mdg_keys_from_raw(mdg_keys **out, const uint8_t pk[MDG_KEY_BYTES],
                                 const uint8_t sk[MDG_KEY_BYTES]);
MDG_EXPORT int mdg_keys_from_b64(mdg_keys **out, const char *pk_b64, const char *sk_b64);
MDG_EXPORT void mdg_keys_destroy(mdg_keys **keys);

/* Borrowed raw keys, MDG_KEY_BYTES long. */
MDG_EXPORT const uint8_t *mdg_keys_public(const mdg_keys *keys);
MDG_EXPORT const uint8_t *mdg_keys_secret(const mdg_keys *keys);

/* Key files, in the layout of the original library (one dir serves both):
 *   PREFIX/NAME        secret key, base64, mode 0600
 *   PREFIX/NAME.pub    public key, base64
 *   PREFIX/NAME.spub   the broker's public key for location NAME
 *   PREFIX/default_location
 * prefix NULL means $MESSIDGE_PREFIX if set, else ~/.messidge. */
MDG_EXPORT int mdg_keys_load(mdg_keys **out, const char *name, const char *prefix);
/* Creates PREFIX (mode 0700) if missing; the secret file is 0600. */
MDG_EXPORT int mdg_keys_save(const mdg_keys *keys, const char *name, const char *prefix);

/* PREFIX/LOCATION.spub */
MDG_EXPORT int mdg_server_pk_load(uint8_t pk[MDG_KEY_BYTES], const char *location,
                                  const char *prefix);
MDG_EXPORT int mdg_server_pk_save(const uint8_t pk[MDG_KEY_BYTES], const char *location,
                                  const char *prefix);

/* PREFIX/default_location into buf (NUL-terminated). */
MDG_EXPORT int mdg_default_location(char *buf, size_t len, const char *prefix);
MDG_EXPORT int mdg_default_location_save(const char *location, const char *prefix);

/* Resolve the prefix into buf (NUL-terminated). */
MDG_EXPORT int mdg_prefix_path(char *buf, size_t len, const char *prefix);

/* Base64 text <-> raw key. out gets MDG_KEY_B64_LEN chars plus NUL. */
MDG_EXPORT int mdg_pk_from_b64(uint8_t pk[MDG_KEY_BYTES], const char *b64);
MDG_EXPORT void mdg_pk_to_b64(const uint8_t pk[MDG_KEY_BYTES], char out[MDG_KEY_B64_LEN + 1]);

/* ------------------------------------------------------------------ params */

/* A params map: text keys -> CBOR values (strings, byte strings, integers,
 * doubles, booleans, null, arrays, nested maps). Public keys are bytes. */
typedef struct mdg_params mdg_params;

MDG_EXPORT mdg_params *mdg_params_new(void); /* empty map; NULL only when out of memory */
MDG_EXPORT void mdg_params_destroy(mdg_params **p);

/* Setters replace an existing value of the same key. Text must be UTF-8
 * and an item within what a receiver accepts (definite strings, nesting
 * and size limits, docs/protocol.md): else MDG_EINVAL with the reason,
 * here rather than a refusal at the receiver. */
MDG_EXPORT int mdg_params_set_str(mdg_params *p, const char *key, const char *value);
MDG_EXPORT int mdg_params_set_bytes(mdg_params *p, const char *key, const void *data, size_t len);
MDG_EXPORT int mdg_params_set_int(mdg_params *p, const char *key, int64_t value);
MDG_EXPORT int mdg_params_set_double(mdg_params *p, const char *key, double value);
MDG_EXPORT int mdg_params_set_bool(mdg_params *p, const char *key, bool value);
MDG_EXPORT int mdg_params_set_null(mdg_params *p, const char *key);
/* Any libcbor item (arrays, maps...). The item is taken: its reference
 * passes to the params, even on failure. */
MDG_EXPORT int mdg_params_set_item(mdg_params *p, const char *key, cbor_item_t *item);
MDG_EXPORT int mdg_params_remove(mdg_params *p, const char *key);

MDG_EXPORT bool mdg_params_has(const mdg_params *p, const char *key);
MDG_EXPORT size_t mdg_params_count(const mdg_params *p);

/* Getters return MDG_ENOTFOUND when the key is absent and MDG_ETYPE when
 * it has another type. Strings come back NUL-terminated; the pointer is
 * borrowed and valid as long as p, even after p changes. Bytes likewise
 * (they point into p's encoded form, which a later change copies first). */
MDG_EXPORT int mdg_params_get_str(const mdg_params *p, const char *key, const char **value);
MDG_EXPORT int mdg_params_get_bytes(const mdg_params *p, const char *key, const uint8_t **data,
                                    size_t *len);
MDG_EXPORT int mdg_params_get_int(const mdg_params *p, const char *key, int64_t *value);
/* Floats of any width; integers are not silently converted. */
MDG_EXPORT int mdg_params_get_double(const mdg_params *p, const char *key, double *value);
MDG_EXPORT int mdg_params_get_bool(const mdg_params *p, const char *key, bool *value);
/* The value as a libcbor item, or NULL when absent (or out of memory).
 * Params are kept encoded; the item is decoded on the first call and kept
 * for later calls until p changes. Borrowed, valid as long as p (also
 * after later changes), read-only: changing it does not change p. The
 * typed getters above are cheaper: they allocate nothing. */
MDG_EXPORT cbor_item_t *mdg_params_get(const mdg_params *p, const char *key);
/* The whole map as a libcbor item, on the same terms as mdg_params_get. */
MDG_EXPORT cbor_item_t *mdg_params_map(const mdg_params *p);

/* Human-readable JSON-like text of a CBOR item or a whole params map, for
 * printing and logs (bytes as "b64:..."). Caller frees with free(). */
MDG_EXPORT char *mdg_item_to_text(const cbor_item_t *item);
MDG_EXPORT char *mdg_params_to_text(const mdg_params *p);

/* ---------------------------------------------------------------- messages */

/* A received message: a command (or a reply) with params and optional
 * bulk. Messages passed to handlers and callbacks are borrowed for the
 * call; messages returned by mdg_conn_call are the caller's to destroy. */
typedef struct mdg_msg mdg_msg;

/* Command name; "" for a reply. Borrowed. */
MDG_EXPORT const char *mdg_msg_command(const mdg_msg *m);
/* Params map (borrowed and read-only, like the message; never NULL). */
MDG_EXPORT const mdg_params *mdg_msg_params(const mdg_msg *m);
/* Raw bulk frame (borrowed), or NULL with *len 0 when there is none. */
MDG_EXPORT const void *mdg_msg_bulk(const mdg_msg *m, size_t *len);
/* Whether the sender wants a reply (the message carries a correlation id). */
MDG_EXPORT bool mdg_msg_replyable(const mdg_msg *m);
/* For replies: whether this reply says the command failed, and the text.
 * mdg_msg_error returns NULL for a successful reply. Borrowed. */
MDG_EXPORT bool mdg_msg_is_error(const mdg_msg *m);
MDG_EXPORT const char *mdg_msg_error(const mdg_msg *m);
/* True when more replies will follow on this channel (long-term channel). */
MDG_EXPORT bool mdg_msg_more(const mdg_msg *m);

/* Reply to a replyable message. results is taken (NULL = empty map); bulk
 * is copied. Replying to a message that is not replyable is MDG_EINVAL.
 * mdg_msg_reply closes the channel; mdg_msg_reply_more keeps it open so the
 * caller's reply callback fires again for each further reply. Call from
 * the handler, or later from any thread on a kept message (mdg_msg_keep),
 * one thread at a time per message; replies leave in the order made.
 * MDG_ECLOSED when the message has had its final reply, when its
 * connection has closed, and on a connection when the session the message
 * came in on has ended (MDG_EV_LOST: the broker restarted, or we were away
 * longer than its grace period): its caller is gone, so stop replying
 * (replies to it that were still queued were dropped, not sent to the new
 * session). From another thread a reply may wait for room (queue_limit).
 * On a node, when the broker has paused this call (its caller is not
 * reading) a reply from an application thread waits until it resumes
 * (MDG_EAGAIN with nonblocking), and so it does while 256 replies to this
 * call are still unacknowledged by the broker (one call's stream must not
 * fill the link ahead of the node's other callers); when the broker has ended it (the caller
 * has gone, or did not read) it returns MDG_ECLOSED: stop replying. A
 * reply larger than the broker's max_message is not sent: MDG_EINVAL, and
 * the caller gets the reason as its call's error. */
MDG_EXPORT int mdg_msg_reply(mdg_msg *m, mdg_params *results, const void *bulk, size_t bulk_len);
MDG_EXPORT int mdg_msg_reply_more(mdg_msg *m, mdg_params *results, const void *bulk,
                                  size_t bulk_len);
/* Fail the message: the caller's blocking call returns MDG_EREMOTE with
 * this text (the original Python Messidge's ValueError); a reply callback gets an error reply.
 * printf-style. For a message that is not replyable the text is logged
 * and sent to the peer's error hook. */
MDG_EXPORT int mdg_msg_fail(mdg_msg *m, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Keep a message past its handler (for later replies on a long-term
 * channel, from any thread). Returns m, now the caller's: reply to it as
 * often as needed, then mdg_msg_destroy it, before destroying the
 * connection or broker it came from. Without keep, the library destroys
 * the message when the handler returns. A kept message belongs to the
 * session it came in on: once that session has ended its replies fail
 * with MDG_ECLOSED (see mdg_msg_reply), which is how a thread streaming
 * on a long-term channel learns that its caller has gone. */
MDG_EXPORT mdg_msg *mdg_msg_keep(mdg_msg *m);

/* Per-session / per-peer application data of the broker session the
 * message came from (the value returned by the session_new hook); NULL on
 * connections. */
MDG_EXPORT void *mdg_msg_session_data(const mdg_msg *m);

MDG_EXPORT void mdg_msg_destroy(mdg_msg **m);

/* ----------------------------------------------------------- command table */

typedef void (*mdg_handler_fn)(mdg_msg *msg, void *arg);

enum mdg_cmd_flags {
    MDG_CMD_NEEDS_REPLY = 1u << 0, /* only accept replyable messages */
    MDG_CMD_NODE_ONLY = 1u << 1,   /* only accept from nodes (broker only) */
    MDG_CMD_USER_ONLY = 1u << 2,   /* only accept from users (broker only) */
};

/* One row of a static command table; a table ends with a row whose name is
 * NULL. `required` is a NULL-terminated list of param names that must be
 * present (type is the handler's business), or NULL. Tables and their
 * strings are borrowed and must outlive the broker / connection. */
typedef struct mdg_cmd {
    const char *name;
    mdg_handler_fn handler;
    const char *const *required;
    unsigned flags;
} mdg_cmd;

/* Helper for the required list: MDG_REQUIRE("dividend", "devisor"). */
#define MDG_REQUIRE(...) ((const char *const[]){__VA_ARGS__, NULL})
#define MDG_CMD_END {NULL, NULL, NULL, 0}

/* ------------------------------------------------------------------ broker */

#define MDG_DEFAULT_PORT 2020

typedef struct mdg_broker mdg_broker;

enum mdg_role { MDG_ROLE_NONE = 0, MDG_ROLE_USER = 1, MDG_ROLE_NODE = 2 };

/* Decides who may connect: the role of a client key (MDG_ROLE_NONE to
 * refuse). Called on the broker's loop thread during the handshake. */
typedef int (*mdg_auth_fn)(const uint8_t pk[MDG_KEY_BYTES], void *arg);

/* Hooks, all optional, all called on the broker loop thread. They mirror
 * the original Python Messidge's SessionMinimal / NodeMinimal / ModelMinimal.resources. */
typedef struct mdg_broker_hooks {
    /* A new user session: return its per-session data (may be NULL); it is
     * passed back to session_closed and given to handlers through
     * mdg_msg_session_data(). */
    void *(*session_new)(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES],
                         const uint8_t *session_id, size_t id_len, void *arg);
    /* The client came back on a new link and resumed its session. */
    void (*session_recovered)(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES],
                              void *session_data, void *arg);
    /* The session ended: goodbye, its grace period passed, replaced, or
     * the broker is stopping. */
    void (*session_closed)(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES],
                           void *session_data, void *arg);
    /* A node connected (a reconnecting node first leaves): per-node data. */
    void *(*node_joined)(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *arg);
    void (*node_left)(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *node_data,
                      void *arg);
    /* The resource offer pushed to each new session as the command
     * "resource_offer": return new params (taken by the broker), or NULL
     * to send none. Without this hook the broker offers
     * {"nodes": [pk, ...]}, the connected nodes' keys as bytes (in a
     * fleet: every broker's, see mdg_broker_each_node). */
    mdg_params *(*resources)(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *arg);
} mdg_broker_hooks;

/* Broker options; zero means the default for every field but port. */
typedef struct mdg_broker_options {
    const char *bind_address; /* interface to bind; default "*" (all) */
    int port;                 /* base port; default 2020; 0 = pick a free one */
    /* How long a user session whose link dropped is kept for the client to
     * resume it (same key, same session id): default 60000 ms. Then it is
     * closed (session_closed fires) and its queue freed. */
    int session_grace_ms;
    /* The same for nodes; calls waiting on a node that does not come back
     * fail when it ends. Default 5000 ms. */
    int node_grace_ms;
    /* Messages queued to one session or node and not yet acknowledged
     * (kept to resend after a reconnect): default 10000. Past it the
     * broker's own sends to that peer are refused (MDG_EAGAIN); final
     * answers to calls still go; a node's replies to a caller past 1.5x
     * pause that call at the node; a sender past 2x is held until it reads
     * (docs/guarantees.md section 3). */
    int queue_limit;
    /* Messidge 1.x compatibility (docs/compatibility.md): also listen for
     * unmodified Python 1.x clients and nodes on legacy_port (1.x clients
     * hard-code 2020; 0 = pick a free one, see mdg_broker_legacy_port).
     * Off by default: 1.x node links are plaintext and unauthenticated. */
    bool legacy;
    int legacy_port;
    /* Largest message accepted from a peer: default 256 MiB. A native
     * client learns it in the welcome and refuses a larger head frame
     * (header and params) or bulk itself (MDG_EINVAL, where it is made);
     * a larger 1.x frame is refused; any other larger frame drops the
     * link (libzmq). */
    long long max_message;
    /* Fairness at a node: what one session may have at one node at once,
     * calls not yet finally answered plus fire-and-forget commands the node
     * has not acknowledged. Default 64. A session past it waits (its further
     * messages are held unprocessed), other sessions do not. A session
     * alone at a node (no other in the last 100 ms) may have 4 times it. */
    int node_window;
    /* Messages the broker reads from one peer and holds unprocessed while
     * where they go is full (the peer is paused): default queue_limit.
     * Past it, further messages of that peer are not taken (nor
     * acknowledged); once its held messages have gone on, the peer is told
     * to say hello again and resends them. The bound holds whatever the
     * peer's own queue_limit is. */
    int hold_limit;
    /* Connections served at once, both listeners together (each holds a
     * file descriptor). Default (0): as many as RLIMIT_NOFILE allows once
     * 96 descriptors are kept for the rest of the process; a larger value
     * is lowered to that, with a warning. Past it new clients are refused
     * during the handshake (they see MDG_EBUSY and retry) while the
     * sessions already open are served as before. docs/guarantees.md. */
    int max_connections;
} mdg_broker_options;

/* keys: the broker's key pair (copied). opts may be NULL for defaults. */
MDG_EXPORT int mdg_broker_new(mdg_broker **out, const mdg_keys *keys,
                              const mdg_broker_options *opts);
MDG_EXPORT void mdg_broker_destroy(mdg_broker **b);

/* Configuration: only before mdg_broker_start / mdg_broker_run. */
MDG_EXPORT int mdg_broker_set_commands(mdg_broker *b, const mdg_cmd *table, void *arg);
MDG_EXPORT int mdg_broker_set_hooks(mdg_broker *b, const mdg_broker_hooks *hooks, void *arg);
MDG_EXPORT int mdg_broker_set_auth(mdg_broker *b, mdg_auth_fn fn, void *arg);
/* Static allow-list (stands in for the identity store): admit pk in role. */
MDG_EXPORT int mdg_broker_allow(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], int role);
/* Admit every key as a user (tests and demos only; logged loudly). */
MDG_EXPORT int mdg_broker_allow_any(mdg_broker *b);

/* Bind and serve on the calling thread until mdg_broker_stop. */
MDG_EXPORT int mdg_broker_run(mdg_broker *b);
/* Bind, then serve on a background thread; returns once bound. */
MDG_EXPORT int mdg_broker_start(mdg_broker *b);
/* Ask the loop to end; safe from any thread and from a signal handler.
 * After stop, run() returns; destroy() joins a started thread. */
MDG_EXPORT void mdg_broker_stop(mdg_broker *b);
/* The TCP port actually bound (useful with port 0), or 0 before binding. */
MDG_EXPORT int mdg_broker_port(const mdg_broker *b);
/* The legacy (1.x) listener's port, or 0 when it is off or not bound. */
MDG_EXPORT int mdg_broker_legacy_port(const mdg_broker *b);

/* Send a command (no reply expected) to a user session, by the id the
 * broker put in msg params "session", or to a node by its pk: the original Python Messidge's
 * send_cmd(rid, ...). Safe from any thread; params taken, bulk copied.
 * On the loop thread (handlers, timers) the result is final: MDG_ENOTFOUND
 * when no such session / node exists, MDG_EAGAIN when its queue is full
 * (queue_limit; try again later). From other threads the message is queued
 * for the loop thread and 0 returned; a target that has gone or is full by
 * then is logged as an error. A session that is away (link dropped, within
 * its grace period) still takes messages: they wait for its resume. */
MDG_EXPORT int mdg_broker_send_session(mdg_broker *b, const uint8_t *session_id, size_t id_len,
                                       const char *command, mdg_params *params, const void *bulk,
                                       size_t bulk_len);
MDG_EXPORT int mdg_broker_send_node(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES],
                                    const char *command, mdg_params *params, const void *bulk,
                                    size_t bulk_len);
/* Close every session of a key (all of a user's sessions, or a node's
 * connection), telling each client why (it sees MDG_ECLOSED and the
 * reason); used when a key is revoked. A later hello from the key is
 * refused unless the auth function admits it again. Safe from any thread
 * (queued to the loop thread); returns how many sessions were closed when
 * called on the loop thread, else 0. */
MDG_EXPORT int mdg_broker_disconnect_key(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES],
                                         const char *reason);

/* Call fn on the loop thread every interval_ms (e.g. to poll an identity
 * store for revocations). Before start / run; any number of timers. */
typedef void (*mdg_broker_timer_fn)(mdg_broker *b, void *arg);
MDG_EXPORT int mdg_broker_add_timer(mdg_broker *b, int interval_ms, mdg_broker_timer_fn fn,
                                    void *arg);

/* A fleet (docs/fleet.md): brokers that look like one service. Each
 * broker joins through a NATS server or cluster; a user of any broker
 * calls a node of any other as if it were local (same params and
 * provenance, replies, streams and errors back to it), and the resource
 * offers and the node list are the fleet's. Between two brokers, messages
 * run on the project's reliable numbered channel over NATS subjects, each
 * sealed with libsodium (crypto_box) from the sending broker's key to the
 * receiving one's: only the member keys given here are heard. */
typedef struct mdg_fleet_options {
    /* NATS server URL(s), comma-separated ("nats://127.0.0.1:4222"; a
     * tls:// URL, or user:password@ in it, as libnats takes them). */
    const char *url;
    /* The fleet's name: brokers of one fleet share it; letters, digits,
     * '-' and '_' (default "messidge"). */
    const char *name;
    /* A broker says it is alive every beat_ms (default 500) and is taken
     * as gone, its nodes withdrawn and calls to them failed, after
     * silence_ms without a word (default 10000). */
    int beat_ms;
    int silence_ms;
} mdg_fleet_options;

/* Before start / run: join a fleet (copied). A broker that never joins
 * needs no NATS and behaves as one broker alone. */
MDG_EXPORT int mdg_broker_join_fleet(mdg_broker *b, const mdg_fleet_options *opts);
/* Before start / run: the public key of another broker of the fleet
 * (its CURVE key, mdg_keys_public). Messages from keys not listed are
 * refused and logged. */
MDG_EXPORT int mdg_broker_fleet_member(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES]);
/* Call fn for every node the broker can route to: its own (local true)
 * and, in a fleet, those of the other brokers. Loop thread only (handlers,
 * hooks, timers). Returns how many. */
typedef void (*mdg_node_fn)(const uint8_t pk[MDG_KEY_BYTES], bool local, void *arg);
MDG_EXPORT size_t mdg_broker_each_node(const mdg_broker *b, mdg_node_fn fn, void *arg);

/* Number of connected user sessions and nodes (loop thread, or approximate). */
MDG_EXPORT size_t mdg_broker_session_count(const mdg_broker *b);
MDG_EXPORT size_t mdg_broker_node_count(const mdg_broker *b);

/* ----------------------------------------------------------------- metrics */

/* The broker's counters and gauges as Prometheus text (exposition format
 * 0.0.4): sessions by role and state, messages and bytes in and out by
 * kind, refusals by reason, handshakes and ZAP refusals, resumes and lost
 * sessions, held senders and queue depths, node calls in flight, uptime
 * (README.md, "Operating the broker", lists them). Any thread; the caller frees the text.
 * Counters are exact; gauges are at most a quarter of a second old. NULL
 * when out of memory. */
MDG_EXPORT char *mdg_broker_metrics_text(const mdg_broker *b);
/* Whether the broker's loop runs (it refreshed its gauges within 5 s). */
MDG_EXPORT bool mdg_broker_healthy(const mdg_broker *b);

/* An HTTP server for a started broker: GET /metrics (the text above) and
 * GET /healthz (200 "ok", or 503 when the loop is not running), on its own
 * thread. Opt-in; bind it to a private address (bind_address NULL or "*":
 * all IPv4 addresses; port 0: a free one). The broker must outlive it. */
typedef struct mdg_metrics_server mdg_metrics_server;
MDG_EXPORT int mdg_metrics_server_new(mdg_metrics_server **out, const mdg_broker *b,
                                      const char *bind_address, int port);
MDG_EXPORT int mdg_metrics_server_port(const mdg_metrics_server *s);
MDG_EXPORT void mdg_metrics_server_destroy(mdg_metrics_server **s);

/* -------------------------------------------------------------- connection */

typedef struct mdg_conn mdg_conn;

/* Reply callback: called on the loop thread once per reply (several times
 * on a long-term channel). The reply is borrowed for the call. */
typedef void (*mdg_reply_fn)(mdg_msg *reply, void *arg);
/* Uncorrelated errors the broker reports (e.g. a fire-and-forget message
 * it refused): default prints a log line. */
typedef void (*mdg_error_fn)(const char *command, const char *text, void *arg);

/* Connection options; zero means the default for every field. */
typedef struct mdg_conn_options {
    int port;            /* broker base port; default 2020 */
    bool reflect_errors; /* send handler failures' text back to the caller */
    /* Messages queued or sent but not yet acknowledged by the broker (kept
     * to be resent after a reconnect). Default 10000. When it is full a
     * send from an application thread blocks until there is room, or with
     * `nonblocking` fails with MDG_EAGAIN. Sends from the loop thread
     * (handlers, callbacks) are never refused nor blocked, so a reply is
     * never lost: stream long replies from another thread (mdg_msg_keep).
     * Nothing is dropped silently. */
    int queue_limit;
    bool nonblocking;
    /* ZMTP heartbeat interval: a broker silent for 3 intervals is taken as
     * gone and the link is remade. Default 2000 ms (noticed within ~8 s). */
    int heartbeat_ms;
    /* Reconnect backoff: from min to max, doubling, with +-50% jitter.
     * Defaults 100 ms and 5000 ms. */
    int reconnect_min_ms;
    int reconnect_max_ms;
    /* Speak Messidge 1.x to an original Python broker (docs/compatibility.md):
     * MDG_LEGACY_USER or MDG_LEGACY_NODE (0: the native protocol, the
     * default). Same API, but no CURVE (a user's params and bulk are sealed
     * with a session key the broker boxes to it; a node's travel in clear)
     * and no acknowledgements (what was handed to the socket before a drop
     * may be lost). A user refuses a broker that does not box it a session
     * key (MDG_EHANDSHAKE): that would turn encryption off. */
    int legacy;
    /* With several brokers (mdg_conn_add_broker): how long the link to the
     * current one may stay down before the next is tried. Default 3000 ms.
     * A broker back within it keeps the session (within its grace); past
     * it the session is lost either way, and another broker gives a new
     * one. */
    int failover_ms;
} mdg_conn_options;

enum mdg_legacy_mode {
    MDG_LEGACY_USER = 1, /* a 1.x user: its session must be sealed */
    MDG_LEGACY_NODE = 2, /* a 1.x node: plaintext, as 1.x nodes are */
};

/* What happens to the link and the session, for mdg_conn_set_event_handler. */
enum mdg_conn_event {
    MDG_EV_CONNECTED = 1, /* first session open; after MDG_EV_LOST
                             when the new session is at another broker
                             (failover: detail names both) */
    MDG_EV_DISCONNECTED,  /* the link dropped; reconnecting with backoff */
    MDG_EV_RECOVERED,     /* reconnected and the session resumed: nothing lost */
    MDG_EV_LOST,          /* reconnected but the broker no longer had the
                             session: reported (with the new session's id
                             already in mdg_conn_session_id) before pending
                             calls fail (MDG_ECLOSED); replies to its
                             commands refused (MDG_ECLOSED); a resource
                             offer follows */
};
typedef void (*mdg_event_fn)(mdg_conn *c, int event, const char *detail, void *arg);

/* Connect to `location` (host name or address) using the key files in
 * prefix (NULL = default): PREFIX/LOCATION, .pub and .spub. */
MDG_EXPORT int mdg_conn_new(mdg_conn **out, const char *location, const char *prefix,
                            const mdg_conn_options *opts);
/* Or with explicit keys (copied) and pinned broker pk, as nodes do. */
MDG_EXPORT int mdg_conn_new_with_keys(mdg_conn **out, const char *location,
                                      const uint8_t server_pk[MDG_KEY_BYTES], const mdg_keys *keys,
                                      const mdg_conn_options *opts);
/* Before start: another broker of the same fleet (docs/fleet.md) to fail
 * over to, at location:port (port 0: opts.port) with its own public key
 * (copied; e.g. mdg_server_pk_load of its location). Up to 16 in all, the
 * one given to mdg_conn_new first. When the link to the current broker
 * stays down for failover_ms, or it refuses our key or the handshake
 * (docs/protocol.md 1.1), the connection tries the next, in turn, and so
 * on round. A new broker does not know the
 * session: MDG_EV_LOST ("the broker at X went away; now connected to Y:
 * session lost"), pending calls fail with MDG_ECLOSED and that text, then
 * MDG_EV_CONNECTED and the new broker's resource offer. Refused by every
 * broker in a row: MDG_EAUTH or MDG_EHANDSHAKE as with one broker. Not in
 * legacy mode. Any thread, before mdg_conn_start. */
MDG_EXPORT int mdg_conn_add_broker(mdg_conn *c, const char *location, int port,
                                   const uint8_t server_pk[MDG_KEY_BYTES]);
/* Disconnects if needed, joins the loop thread, frees everything. Pending
 * blocking calls return MDG_ECLOSED. */
MDG_EXPORT void mdg_conn_destroy(mdg_conn **c);

/* Before start: commands the broker may push (e.g. resource_offer). */
MDG_EXPORT int mdg_conn_register_commands(mdg_conn *c, const mdg_cmd *table, void *arg);
MDG_EXPORT int mdg_conn_set_error_handler(mdg_conn *c, mdg_error_fn fn, void *arg);
/* Before start: link and session events, called on the loop thread. */
MDG_EXPORT int mdg_conn_set_event_handler(mdg_conn *c, mdg_event_fn fn, void *arg);
/* The session id the broker gave (borrowed; len 0 before the first). */
MDG_EXPORT const uint8_t *mdg_conn_session_id(const mdg_conn *c, size_t *len);

/* Start the loop thread and begin connecting. */
MDG_EXPORT int mdg_conn_start(mdg_conn *c);
/* Wait until the session is established: 0, MDG_ETIMEDOUT, MDG_EAUTH (the
 * broker refused our key), MDG_EHANDSHAKE, MDG_EBUSY (the broker is at its
 * connection limit: the connection keeps retrying with its backoff, so
 * waiting again may succeed), or MDG_ECLOSED. timeout_ms < 0 waits forever.
 * Any thread but the connection's loop thread.
 * A link that fails during its handshake (reset, dropped, refused) is no
 * verdict: the connection retries on its reconnect schedule and this goes
 * on waiting; on MDG_ETIMEDOUT mdg_last_error() says how many links failed
 * and what the last one saw. MDG_EHANDSHAKE comes only on evidence, before
 * the first session (docs/protocol.md section 1.1): the peer does not speak
 * CURVE (a Messidge 1.x broker; in legacy mode: the peer speaks CURVE), or
 * it closed the link during the CURVE handshake on 3 attempts in a row (the
 * pinned broker key is most likely wrong). After MDG_EAUTH or
 * MDG_EHANDSHAKE the connection still retries every reconnect_max_ms; a
 * later session clears the error. */
MDG_EXPORT int mdg_conn_wait_until_ready(mdg_conn *c, int timeout_ms);

/* Fire and forget. params taken (NULL = empty); bulk copied. Messages from
 * one connection are processed in the order they were sent. These and the
 * calls below return MDG_EINVAL, sending nothing, for a head frame (header
 * and params) or bulk larger than the broker's max_message, once its
 * welcome has said it; one made before is failed with that text when the
 * welcome comes (docs/protocol.md section 5.1). */
MDG_EXPORT int mdg_conn_send(mdg_conn *c, const char *command, mdg_params *params, const void *bulk,
                             size_t bulk_len);
/* Send expecting replies: cb runs on the loop thread for each reply. */
MDG_EXPORT int mdg_conn_send_cb(mdg_conn *c, const char *command, mdg_params *params,
                                const void *bulk, size_t bulk_len, mdg_reply_fn cb, void *arg);
/* Blocking call: waits up to timeout_ms (< 0: forever) for the reply. On 0,
 * *reply is the caller's (mdg_msg_destroy). When the handler failed the
 * message the result is MDG_EREMOTE, *reply is NULL and mdg_last_error()
 * holds the remote text. Safe from any thread, including inside handlers
 * and reply callbacks. From another thread, while the loop thread has
 * nothing to do, the caller sends and reads its reply on the socket itself
 * (faster); handlers and callbacks still run only on the loop thread. */
MDG_EXPORT int mdg_conn_call(mdg_conn *c, const char *command, mdg_params *params, const void *bulk,
                             size_t bulk_len, int timeout_ms, mdg_msg **reply);

/* Block until the connection's loop ends (disconnect, or the broker closed
 * the session), as the original Python Messidge's wait_until_complete. */
MDG_EXPORT int mdg_conn_wait_until_complete(mdg_conn *c, int timeout_ms);
/* Say goodbye to the broker and stop the loop: what is queued is sent and
 * the broker's acknowledgement awaited for up to 2 s first. Safe from any
 * thread. */
MDG_EXPORT void mdg_conn_disconnect(mdg_conn *c);

#ifdef __cplusplus
}
#endif
#endif
