/* broker_builtin.c - see broker_builtin.h.
 *
 *   ping            -> {"pong": true, "version": "0.1.0"}
 *   nodes           -> {"nodes": [{"name": "divide", "pk": "B64"}, ...]}
 *                      the connected nodes (what a new session is offered),
 *                      named as `messidge-admin add-node NAME` registered them;
 *                      in a fleet, the other brokers' nodes follow ours (their
 *                      names from our store: a shared PostgreSQL one names all)
 *
 * Everything but broker_builtin_set_store runs on the broker's loop thread
 * (handlers, hooks, timers, the auth function), so the node list needs no
 * lock; the store pointer is the one thing another thread sets. */
#include "broker_builtin.h"
#include "cli_util.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct broker_builtin {
    mdg_broker *b;
    _Atomic(mdg_identity *) id; /* NULL until the port is bound */
    atomic_bool poll;           /* read the revocation log every second */
    int64_t revoke_cursor;      /* loop thread */
    uint8_t (*nodes)[MDG_KEY_BYTES]; /* connected nodes, in joining order */
    size_t n_nodes, cap_nodes;
};

/* ----------------------------------------------------- the identity store */

static int auth(const uint8_t pk[MDG_KEY_BYTES], void *arg)
{
    mdg_identity *id = atomic_load(&((broker_builtin *)arg)->id);
    return id ? mdg_identity_auth(pk, id) : MDG_ROLE_NONE;
}

static void on_revoked(const uint8_t pk[MDG_KEY_BYTES], void *arg)
{
    char b64[MDG_KEY_B64_LEN + 1];
    mdg_pk_to_b64(pk, b64);
    int n = mdg_broker_disconnect_key(arg, pk, "key revoked"); /* loop thread: final */
    cli_log(MDG_LOG_WARN, "key %.12s revoked: %d session(s) closed", b64, n);
}

static void poll_revocations(mdg_broker *b, void *arg)
{
    broker_builtin *bb = arg;
    mdg_identity *id = atomic_load(&bb->id);
    if (id && atomic_load(&bb->poll) &&
        mdg_identity_revoked_since(id, &bb->revoke_cursor, on_revoked, b) != 0)
        cli_log(MDG_LOG_WARN, "cannot read revocations: %s", mdg_last_error());
}

int broker_builtin_set_store(broker_builtin *bb, mdg_identity *id, bool poll)
{
    atomic_store(&bb->poll, poll);
    /* revocations before now are the store's past: start after them (the
     * timer reads the cursor only once the store is published) */
    int rc = mdg_identity_revoked_since(id, &bb->revoke_cursor, NULL, NULL);
    if (rc == 0)
        atomic_store(&bb->id, id);
    return rc;
}

/* ------------------------------------------------------------- the nodes */

static void *node_joined(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *arg)
{
    broker_builtin *bb = arg;
    (void)b;
    if (bb->n_nodes == bb->cap_nodes) {
        size_t cap = bb->cap_nodes ? 2 * bb->cap_nodes : 16;
        void *grown = realloc(bb->nodes, cap * sizeof *bb->nodes);
        if (!grown)
            return NULL; /* only `nodes` misses it */
        bb->nodes = grown;
        bb->cap_nodes = cap;
    }
    memcpy(bb->nodes[bb->n_nodes++], pk, MDG_KEY_BYTES);
    return NULL;
}

static void node_left(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *data, void *arg)
{
    broker_builtin *bb = arg;
    (void)b;
    (void)data;
    for (size_t i = 0; i < bb->n_nodes; i++)
        if (memcmp(bb->nodes[i], pk, MDG_KEY_BYTES) == 0) {
            memmove(bb->nodes[i], bb->nodes[i + 1], (bb->n_nodes - i - 1) * sizeof *bb->nodes);
            bb->n_nodes--;
            return;
        }
}

/* ---------------------------------------------------------- the commands */

static void h_ping(mdg_msg *msg, void *arg)
{
    (void)arg;
    mdg_params *r = mdg_params_new();
    if (!r || mdg_params_set_bool(r, "pong", true) || mdg_params_set_str(r, "version", mdg_version())) {
        mdg_params_destroy(&r);
        mdg_msg_fail(msg, "out of memory");
        return;
    }
    mdg_msg_reply(msg, r, NULL, 0);
}

/* One node of the answer: its key, and its name once the store is read. */
typedef struct node_row {
    char b64[MDG_KEY_B64_LEN + 1];
    char name[256];
} node_row;

typedef struct node_rows {
    node_row *row;
    size_t n, cap;
} node_rows;

static void push_row(node_rows *r, const uint8_t pk[MDG_KEY_BYTES])
{
    if (r->n < r->cap) {
        mdg_pk_to_b64(pk, r->row[r->n].b64);
        r->row[r->n++].name[0] = '\0';
    }
}

/* The nodes of the other brokers of a fleet, after our own. */
static void push_fleet_node(const uint8_t pk[MDG_KEY_BYTES], bool local, void *arg)
{
    if (!local)
        push_row(arg, pk);
}

static int name_rows(const mdg_identity_entry *e, void *arg)
{
    node_rows *r = arg;
    if (e->kind != MDG_ENTRY_NODE)
        return 0;
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(e->pk_b64, r->row[i].b64) == 0)
            snprintf(r->row[i].name, sizeof r->row[i].name, "%s", e->name ? e->name : "");
    return 0;
}

/* m[k] = v, both strings (the map takes its own references). */
static bool map_put_str(cbor_item_t *m, const char *k, const char *v)
{
    cbor_item_t *key = cbor_build_string(k), *val = cbor_build_string(v);
    bool ok = key && val && cbor_map_add(m, (struct cbor_pair){.key = key, .value = val});
    if (key)
        cbor_decref(&key);
    if (val)
        cbor_decref(&val);
    return ok;
}

/* [{"name": NAME, "pk": B64}, ...]; NULL when out of memory. */
static cbor_item_t *node_list(const node_rows *r)
{
    cbor_item_t *list = cbor_new_definite_array(r->n);
    for (size_t i = 0; list && i < r->n; i++) {
        cbor_item_t *m = cbor_new_definite_map(2);
        bool ok = m && map_put_str(m, "name", r->row[i].name) && map_put_str(m, "pk", r->row[i].b64) &&
                  cbor_array_push(list, m);
        if (m)
            cbor_decref(&m);
        if (!ok)
            cbor_decref(&list);
    }
    return list;
}

static void h_nodes(mdg_msg *msg, void *arg)
{
    broker_builtin *bb = arg;
    mdg_identity *id = atomic_load(&bb->id);
    size_t all = mdg_broker_each_node(bb->b, NULL, NULL);
    node_rows rows = {.cap = bb->n_nodes + all};
    cbor_item_t *list = NULL;
    mdg_params *r = mdg_params_new();

    if (r && (rows.row = malloc((rows.cap ? rows.cap : 1) * sizeof *rows.row))) {
        for (size_t i = 0; i < bb->n_nodes; i++)
            push_row(&rows, bb->nodes[i]);
        mdg_broker_each_node(bb->b, push_fleet_node, &rows);
        /* The names: one reading of the store for the whole answer (a
         * node's name may be added while the broker runs). */
        if (id)
            mdg_identity_list(id, name_rows, &rows);
        list = node_list(&rows);
    }
    free(rows.row);
    if (!list || mdg_params_set_item(r, "nodes", list) != 0) {
        mdg_params_destroy(&r);
        mdg_msg_fail(msg, "out of memory");
        return;
    }
    mdg_msg_reply(msg, r, NULL, 0);
}

static const mdg_cmd builtin_commands[] = {
    {"ping", h_ping, NULL, MDG_CMD_NEEDS_REPLY},
    {"nodes", h_nodes, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* ------------------------------------------------------------- lifecycle */

int broker_builtin_new(broker_builtin **out, mdg_broker *b)
{
    static const mdg_broker_hooks hooks = {.node_joined = node_joined, .node_left = node_left};
    broker_builtin *bb = calloc(1, sizeof *bb);
    int rc;
    *out = NULL;
    if (!bb)
        return MDG_ENOMEM;
    bb->b = b;
    atomic_init(&bb->id, NULL);
    if ((rc = mdg_broker_set_commands(b, builtin_commands, bb)) != 0 ||
        (rc = mdg_broker_set_hooks(b, &hooks, bb)) != 0 || (rc = mdg_broker_set_auth(b, auth, bb)) != 0 ||
        (rc = mdg_broker_add_timer(b, 1000, poll_revocations, bb)) != 0) {
        free(bb);
        return rc;
    }
    *out = bb;
    return 0;
}

void broker_builtin_destroy(broker_builtin **bbp)
{
    if (!bbp || !*bbp)
        return;
    free((*bbp)->nodes);
    free(*bbp);
    *bbp = NULL;
}
