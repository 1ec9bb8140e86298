/* notes_broker.c - the demo broker of "Using Messidge", in C.
 *
 * It keeps a list of notes for every user (namespaced by the user's public
 * key: there are no user names) and serves three commands:
 *
 *   write_note       {note}    store a note (fire and forget)
 *   fetch_notes      {}        reply {notes: [...]} (needs a reply)
 *   raise_exception  {}        fail, so the caller sees the error text
 *
 * The original Python Messidge's MyModel, MyController, MySession and MyNode map onto a model
 * struct, a static command table with one handler per command, and session
 * and node hooks. The broker forwards to a node every user call that names
 * it in the param 'node' (no code here), and the resources hook offers each
 * new session the keys of the connected nodes.
 *
 * Who may connect comes from the identity store in the state directory, as
 * in the guide's quickstart: `messidge-admin invite` makes a token, the user
 * runs `messidge confirm` against the account server this broker runs on
 * the base port + 1, and `messidge-admin add-node` registers nodes. The
 * store is polled every second for revocations, which end live sessions.
 *
 * With --store postgresql://... several brokers share one store, and with
 * --fleet they form a fleet over NATS (docs/fleet.md): a user of one calls
 * the nodes of the others, and its resource offer lists them
 * (demo/run-fleet-demo.sh).
 *
 *   notes_broker [--prefix DIR] [--state DIR | --store LOCATION] [--port N] [--port-file FILE]
 *                [--account-port N] [--bind ADDR] [--verbose]
 *                [--fleet URL [--fleet-name NAME] [--fleet-member KEY ...]]
 *
 * Once serving it prints on stdout
 *   notes_broker: listening on port N, accounts on port M
 *   notes_broker: broker public key B64
 * and then writes the port file, if asked for.
 */
#include "messidge.h"
#include "messidge_identity.h"
#include "../tools/cli_util.h"

#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FLEET_MEMBERS_MAX 64 /* other brokers of a fleet, at most (--fleet-member) */

/* ------------------------------------------------------------------ logging */

static int log_level = MDG_LOG_INFO;

/* One sink for the library's lines and ours, so they read as one log. */
static void log_sink(int level, const char *text, void *arg)
{
    char line[1200];
    (void)arg;
    mdg_log_format(line, sizeof line, level, text); /* time, notes_broker[pid], level */
    fputs(line, stderr);
}

static void logf_(int level, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    if (level > log_level)
        return;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    log_sink(level, text, NULL);
}

/* -------------------------------------------------------------------- model */

/* The notes of one user. */
typedef struct user_notes {
    uint8_t pk[MDG_KEY_BYTES];
    char **notes;
    size_t n, cap;
} user_notes;

/* The original Python Messidge's MyModel: user pk -> list of notes, and the nodes connected
 * now (the original Python Messidge's self.nodes). Linear searches are fine for a demo; a real
 * broker would use hash maps. Only the broker's loop thread touches it (all
 * handlers and hooks run there), so it needs no lock. */
typedef struct model {
    user_notes *users;
    size_t n, cap;
    uint8_t (*nodes)[MDG_KEY_BYTES];
    size_t n_nodes, cap_nodes;
} model;

static user_notes *model_find(model *m, const uint8_t pk[MDG_KEY_BYTES], bool create)
{
    for (size_t i = 0; i < m->n; i++)
        if (memcmp(m->users[i].pk, pk, MDG_KEY_BYTES) == 0)
            return &m->users[i];
    if (!create)
        return NULL;
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 8;
        user_notes *u = realloc(m->users, cap * sizeof *u);
        if (!u)
            return NULL;
        m->users = u;
        m->cap = cap;
    }
    user_notes *u = &m->users[m->n++];
    memset(u, 0, sizeof *u);
    memcpy(u->pk, pk, MDG_KEY_BYTES);
    return u;
}

static int model_add_note(model *m, const uint8_t pk[MDG_KEY_BYTES], const char *note)
{
    user_notes *u = model_find(m, pk, true);
    if (!u)
        return MDG_ENOMEM;
    if (u->n == u->cap) {
        size_t cap = u->cap ? u->cap * 2 : 8;
        char **n = realloc(u->notes, cap * sizeof *n);
        if (!n)
            return MDG_ENOMEM;
        u->notes = n;
        u->cap = cap;
    }
    if (!(u->notes[u->n] = strdup(note)))
        return MDG_ENOMEM;
    u->n++;
    return 0;
}

/* A node joined: remember its key (once, even if it reconnects). */
static int model_add_node(model *m, const uint8_t pk[MDG_KEY_BYTES])
{
    for (size_t i = 0; i < m->n_nodes; i++)
        if (memcmp(m->nodes[i], pk, MDG_KEY_BYTES) == 0)
            return 0;
    if (m->n_nodes == m->cap_nodes) {
        size_t cap = m->cap_nodes ? m->cap_nodes * 2 : 4;
        uint8_t(*n)[MDG_KEY_BYTES] = realloc(m->nodes, cap * sizeof *n);
        if (!n)
            return MDG_ENOMEM;
        m->nodes = n;
        m->cap_nodes = cap;
    }
    memcpy(m->nodes[m->n_nodes++], pk, MDG_KEY_BYTES);
    return 0;
}

/* A node left: forget its key (order does not matter). */
static void model_remove_node(model *m, const uint8_t pk[MDG_KEY_BYTES])
{
    for (size_t i = 0; i < m->n_nodes; i++) {
        if (memcmp(m->nodes[i], pk, MDG_KEY_BYTES) == 0) {
            memcpy(m->nodes[i], m->nodes[--m->n_nodes], MDG_KEY_BYTES);
            return;
        }
    }
}

static void model_free(model *m)
{
    for (size_t i = 0; i < m->n; i++) {
        for (size_t j = 0; j < m->users[i].n; j++)
            free(m->users[i].notes[j]);
        free(m->users[i].notes);
    }
    free(m->users);
    free(m->nodes);
    memset(m, 0, sizeof *m);
}

/* --------------------------------------------------------------- controller */

/* The broker stamps 'user' on every message from a user: it is the key the
 * connection authenticated with, whatever the sender put in its params. */
static const uint8_t *sender_pk(mdg_msg *msg)
{
    const uint8_t *pk;
    size_t len;
    if (mdg_params_get_bytes(mdg_msg_params(msg), "user", &pk, &len) != 0 || len != MDG_KEY_BYTES)
        return NULL;
    return pk;
}

static void h_write_note(mdg_msg *msg, void *arg)
{
    model *m = arg;
    const char *note;
    const uint8_t *pk = sender_pk(msg);
    /* The table checked that 'note' exists; its type is ours to check. */
    if (mdg_params_get_str(mdg_msg_params(msg), "note", &note) != 0) {
        mdg_msg_fail(msg, "'note' must be a text string");
        return;
    }
    if (!pk) {
        mdg_msg_fail(msg, "write_note is for users");
        return;
    }
    if (model_add_note(m, pk, note) != 0)
        mdg_msg_fail(msg, "out of memory");
}

static void h_fetch_notes(mdg_msg *msg, void *arg)
{
    model *m = arg;
    const uint8_t *pk = sender_pk(msg);
    user_notes *u = pk ? model_find(m, pk, false) : NULL;
    size_t n = u ? u->n : 0;
    cbor_item_t *list = cbor_new_definite_array(n);
    mdg_params *results = mdg_params_new();
    bool ok = list && results;

    for (size_t i = 0; ok && i < n; i++) {
        cbor_item_t *s = cbor_build_string(u->notes[i]);
        ok = s && cbor_array_push(list, s);
        if (s)
            cbor_decref(&s); /* the array holds its own reference */
    }
    /* set_item takes the list's reference, even when it fails */
    if (ok && mdg_params_set_item(results, "notes", list) == 0) {
        mdg_msg_reply(msg, results, NULL, 0);
        return;
    }
    if (!ok && list)
        cbor_decref(&list);
    mdg_params_destroy(&results);
    mdg_msg_fail(msg, "out of memory");
}

static void h_raise_exception(mdg_msg *msg, void *arg)
{
    (void)arg;
    /* The original Python Messidge raises ValueError; here the caller's blocking call returns
     * MDG_EREMOTE with this text in mdg_last_error(). */
    mdg_msg_fail(msg, "raise_exception was called");
}

/* The original Python Messidge's controller.commands: the library checks the required params
 * and the flags before a handler runs. */
static const mdg_cmd commands[] = {
    {"write_note", h_write_note, MDG_REQUIRE("note"), 0},
    {"fetch_notes", h_fetch_notes, NULL, MDG_CMD_NEEDS_REPLY},
    {"raise_exception", h_raise_exception, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* ----------------------------------------------------------------- sessions */

/* The original Python Messidge's MySession: per-session data the broker hands back with every
 * message of the session (mdg_msg_session_data). */
typedef struct session {
    char pk_b64[MDG_KEY_B64_LEN + 1];
} session;

static void *on_session_new(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES],
                            const uint8_t *session_id, size_t id_len, void *arg)
{
    (void)b;
    (void)session_id;
    (void)id_len;
    (void)arg;
    session *s = calloc(1, sizeof *s);
    if (s)
        mdg_pk_to_b64(pk, s->pk_b64);
    logf_(MDG_LOG_DEBUG, "I am the right kind of session object.");
    return s;
}

static void on_session_closed(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *data,
                              void *arg)
{
    (void)b;
    (void)pk;
    (void)arg;
    session *s = data;
    logf_(MDG_LOG_DEBUG, "session of %.12s closed", s ? s->pk_b64 : "?");
    free(s);
}

/* ------------------------------------------------------------------- nodes */

/* The original Python Messidge's MyNode: per-node data, made when a node connects. A node that
 * reconnects first leaves, then joins again. */
typedef struct node {
    char pk_b64[MDG_KEY_B64_LEN + 1];
} node;

static void *on_node_joined(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *arg)
{
    (void)b;
    model *m = arg;
    node *n = calloc(1, sizeof *n);
    if (n)
        mdg_pk_to_b64(pk, n->pk_b64);
    if (model_add_node(m, pk) != 0)
        logf_(MDG_LOG_ERROR, "out of memory: node not offered to users");
    logf_(MDG_LOG_DEBUG, "I am the right kind of node object.");
    logf_(MDG_LOG_INFO, "node %.12s joined", n ? n->pk_b64 : "?");
    return n;
}

static void on_node_left(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *data, void *arg)
{
    (void)b;
    model *m = arg;
    node *n = data;
    model_remove_node(m, pk);
    logf_(MDG_LOG_INFO, "node %.12s left", n ? n->pk_b64 : "?");
    free(n);
}

/* The nodes of the other brokers of a fleet (mdg_broker_each_node), as
 * CBOR byte strings pushed onto list; only counted when list is NULL. */
typedef struct fleet_nodes {
    cbor_item_t *list;
    size_t count;
    bool ok;
} fleet_nodes;

static void add_fleet_node(const uint8_t pk[MDG_KEY_BYTES], bool local, void *arg)
{
    fleet_nodes *f = arg;
    if (local) /* ours: the model has them */
        return;
    f->count++;
    if (f->list && f->ok) {
        cbor_item_t *key = cbor_build_bytestring(pk, MDG_KEY_BYTES);
        f->ok = key && cbor_array_push(f->list, key);
        if (key)
            cbor_decref(&key);
    }
}

/* The original Python Messidge's model.resources(pk): what to offer a new session, pushed to it
 * as the command resource_offer. Here every user is offered every connected
 * node, {"nodes": [pk, ...]} with the keys as bytes, and in a fleet
 * (--fleet) the nodes of the other brokers too; pk (the user's key) could
 * be used to offer each user only some. Without this hook the broker offers
 * the same by default; it is written out to show the API. */
static mdg_params *on_resources(mdg_broker *b, const uint8_t pk[MDG_KEY_BYTES], void *arg)
{
    (void)pk;
    model *m = arg;
    fleet_nodes fleet = {.ok = true};
    mdg_broker_each_node(b, add_fleet_node, &fleet); /* counts them */
    mdg_params *offer = mdg_params_new();
    cbor_item_t *list = cbor_new_definite_array(m->n_nodes + fleet.count);
    bool ok = offer && list;

    for (size_t i = 0; ok && i < m->n_nodes; i++) {
        cbor_item_t *key = cbor_build_bytestring(m->nodes[i], MDG_KEY_BYTES);
        ok = key && cbor_array_push(list, key);
        if (key)
            cbor_decref(&key); /* the array holds its own reference */
    }
    fleet = (fleet_nodes){.list = list, .ok = ok};
    if (ok) /* the same loop-thread turn: the same nodes as counted */
        mdg_broker_each_node(b, add_fleet_node, &fleet);
    ok = fleet.ok;
    /* set_item takes the list's reference, even when it fails */
    if (ok && mdg_params_set_item(offer, "nodes", list) == 0)
        return offer; /* taken by the broker */
    if (!ok && list)
        cbor_decref(&list);
    mdg_params_destroy(&offer);
    logf_(MDG_LOG_ERROR, "out of memory: no resource offer");
    return NULL;
}

/* ------------------------------------------------------------------ options */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: notes_broker [options]\n"
            "  --prefix DIR        key directory (default $MESSIDGE_PREFIX or ~/.messidge);\n"
            "                      the broker's keys are DIR/localhost_broker(.pub), made if missing\n"
            "  --state DIR         identity store directory (default %s), as for\n"
            "                      messidge-admin --state: who may connect\n"
            "  --port N            base port (default %d; 0 = any free port)\n"
            "  --account-port N    account server port (default base port + 1, or a free port\n"
            "                      when --port is 0; 0 = any free port)\n"
            "  --port-file FILE    write the bound base port to FILE once serving\n"
            "  --bind ADDR         interface to listen on (default 127.0.0.1)\n"
            "  --legacy-port N     also admit the original Python Messidge 1.x users and\n"
            "                      nodes on port N (they use 2020: run --port 3030\n"
            "                      --legacy-port 2020; 0 = any free port); see\n"
            "                      docs/compatibility.md for what 1.x links lack\n"
            "  --store LOCATION    the same, or a PostgreSQL URI (postgresql://USER@HOST:PORT/DB)\n"
            "                      that several brokers share\n"
            "  --fleet URL         join a fleet of brokers through the NATS server(s) at URL\n"
            "                      (several: comma-separated); offers list the fleet's nodes\n"
            "  --fleet-name NAME   the fleet's name (default messidge)\n"
            "  --fleet-member KEY  another broker of the fleet, by its public key (repeat)\n"
            "  --verbose           debug logging\n"
            "  --help              this text\n"
            "Prints 'notes_broker: listening on port N, accounts on port M' on stdout once\n"
            "serving; runs until SIGINT or SIGTERM.\n",
            MDG_DEFAULT_STATE_DIR, MDG_DEFAULT_PORT);
}

/* -------------------------------------------------------------------- main */

static mdg_broker *the_broker;
static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
    mdg_broker_stop(the_broker); /* async-signal-safe */
}

/* The original Python Messidge's try: KeyPair('localhost_broker') except: KeyPair.new(...) */
static int broker_keys(mdg_keys **keys, const char *prefix)
{
    int rc = mdg_keys_load(keys, "localhost_broker", prefix);
    if (rc != MDG_ENOENT)
        return rc;
    logf_(MDG_LOG_INFO, "no broker keys yet: making localhost_broker");
    if ((rc = mdg_keys_new(keys)) != 0)
        return rc;
    if ((rc = mdg_keys_save(*keys, "localhost_broker", prefix)) != 0)
        mdg_keys_destroy(keys);
    return rc;
}

int main(int argc, char **argv)
{
    enum { O_PREFIX = 1, O_STATE, O_PORT, O_ACCOUNT_PORT, O_PORT_FILE, O_BIND, O_VERBOSE, O_HELP, O_LEGACY_PORT,
           O_FLEET, O_FLEET_NAME, O_FLEET_MEMBER };
    static const struct option longopts[] = {
        {"prefix", required_argument, NULL, O_PREFIX},
        {"state", required_argument, NULL, O_STATE},
        {"store", required_argument, NULL, O_STATE},
        {"fleet", required_argument, NULL, O_FLEET},
        {"fleet-name", required_argument, NULL, O_FLEET_NAME},
        {"fleet-member", required_argument, NULL, O_FLEET_MEMBER},
        {"port", required_argument, NULL, O_PORT},
        {"account-port", required_argument, NULL, O_ACCOUNT_PORT},
        {"port-file", required_argument, NULL, O_PORT_FILE},
        {"bind", required_argument, NULL, O_BIND},
        {"verbose", no_argument, NULL, O_VERBOSE},
        {"help", no_argument, NULL, O_HELP},
        {"legacy-port", required_argument, NULL, O_LEGACY_PORT},
        {NULL, 0, NULL, 0},
    };
    const char *prefix = NULL, *state = NULL, *port_file = NULL, *bind_addr = "127.0.0.1";
    int port = MDG_DEFAULT_PORT, account_port = -1; /* -1: base port + 1 */
    int legacy_port = -1;                           /* -1: no Messidge 1.x listener */
    int opt, rc, status = 1;
    mdg_fleet_options fo = {0};
    uint8_t members[FLEET_MEMBERS_MAX][MDG_KEY_BYTES];
    size_t n_members = 0;
    char pk_b64[MDG_KEY_B64_LEN + 1];
    mdg_keys *keys = NULL;
    mdg_identity *id = NULL;
    mdg_broker *b = NULL;
    mdg_account_server *accounts = NULL;
    model notes = {0};
    mdg_broker_hooks hooks = {
        .session_new = on_session_new,
        .session_closed = on_session_closed,
        .node_joined = on_node_joined,
        .node_left = on_node_left,
        .resources = on_resources,
    };
    sigset_t block, old;
    struct sigaction sa = {.sa_handler = on_signal};

    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case O_PREFIX: prefix = optarg; break;
        case O_STATE: state = optarg; break;
        case O_PORT:
        case O_ACCOUNT_PORT:
        case O_LEGACY_PORT: {
            int v = cli_parse_port(optarg);
            if (v < 0) {
                fprintf(stderr, "notes_broker: bad port '%s'\n", optarg);
                return 1;
            }
            *(opt == O_PORT ? &port : opt == O_ACCOUNT_PORT ? &account_port : &legacy_port) = v;
            break;
        }
        case O_PORT_FILE: port_file = optarg; break;
        case O_BIND: bind_addr = optarg; break;
        case O_FLEET: fo.url = optarg; break;
        case O_FLEET_NAME: fo.name = optarg; break;
        case O_FLEET_MEMBER:
            if (n_members == FLEET_MEMBERS_MAX || mdg_pk_from_b64(members[n_members], optarg) != 0) {
                fprintf(stderr, "notes_broker: bad or too many --fleet-member \"%s\"\n", optarg);
                return 1;
            }
            n_members++;
            break;
        case O_VERBOSE: log_level = MDG_LOG_DEBUG; break;
        case O_HELP: usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind < argc || (!fo.url && (fo.name || n_members))) {
        usage(stderr);
        return 1;
    }
    mdg_set_log(log_sink, NULL, log_level);
    /* --legacy-port: the original Python Messidge 1.x users and nodes join
     * the same sessions on their own listener (docs/compatibility.md) */
    mdg_broker_options bo = {.bind_address = bind_addr, .port = port, .legacy = legacy_port >= 0,
                             .legacy_port = legacy_port >= 0 ? legacy_port : 0};

    /* Who may connect: the identity store that messidge-admin fills (and
     * the account server below, when a user confirms an invitation).
     * Opened first, so that a wrong --state makes no broker keys. */
    if ((rc = mdg_identity_open(&id, state)) != 0) {
        fprintf(stderr, "notes_broker: identity store: %s\n", mdg_last_error());
        goto done;
    }

    if ((rc = broker_keys(&keys, prefix)) != 0) {
        fprintf(stderr, "notes_broker: broker keys: %s\n", mdg_last_error());
        goto done;
    }
    mdg_pk_to_b64(mdg_keys_public(keys), pk_b64);

    if ((rc = mdg_broker_new(&b, keys, &bo)) != 0 ||
        (rc = mdg_broker_set_commands(b, commands, &notes)) != 0 ||
        (rc = mdg_broker_set_hooks(b, &hooks, &notes)) != 0 ||
        /* admit keys from the store; a revoked key's sessions are closed */
        (rc = mdg_identity_attach(id, b)) != 0) {
        fprintf(stderr, "notes_broker: %s\n", mdg_last_error());
        goto done;
    }
    /* In a fleet (docs/fleet.md), a user here calls a node of another
     * broker as one of ours: nothing else in this program changes. */
    if (fo.url && (rc = mdg_broker_join_fleet(b, &fo)) != 0) {
        fprintf(stderr, "notes_broker: cannot join the fleet: %s\n", mdg_last_error());
        goto done;
    }
    for (size_t i = 0; i < n_members; i++)
        if ((rc = mdg_broker_fleet_member(b, members[i])) != 0) {
            fprintf(stderr, "notes_broker: cannot add a fleet member: %s\n", mdg_last_error());
            goto done;
        }

    /* Signals are blocked while the broker's and the account server's
     * threads start, so they inherit a blocked mask and the signals are
     * delivered to this thread's sigsuspend. */
    sigemptyset(&sa.sa_mask);
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    the_broker = b;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    pthread_sigmask(SIG_BLOCK, &block, &old);

    /* start, not run: the port must be known (port 0) before serving */
    if ((rc = mdg_broker_start(b)) != 0) {
        fprintf(stderr, "notes_broker: %s\n", mdg_last_error());
        goto done;
    }
    port = mdg_broker_port(b);

    /* The account server, on the base port + 1 unless told otherwise:
     * `messidge confirm` posts an invitation token and the user's public
     * key there and gets the broker's public key back. A free base port
     * (0) gets a free account port: the port after a random one is often
     * taken (an outgoing connection's, or one in TIME_WAIT). */
    if (account_port < 0)
        account_port = bo.port == 0 ? 0 : port + 1;
    if ((rc = mdg_account_server_new(&accounts, id, mdg_keys_public(keys),
                                     strcmp(bind_addr, "*") == 0 ? NULL : bind_addr,
                                     account_port)) != 0) {
        fprintf(stderr, "notes_broker: %s\n", mdg_last_error());
        goto done;
    }
    logf_(MDG_LOG_INFO, "serving notes on %s port %d, accounts on port %d", bind_addr, port,
          mdg_account_server_port(accounts));
    printf("notes_broker: listening on port %d, accounts on port %d", port, mdg_account_server_port(accounts));
    if (bo.legacy)
        printf(", Messidge 1.x on port %d", mdg_broker_legacy_port(b));
    printf("\nnotes_broker: broker public key %s\n", pk_b64);
    fflush(stdout);
    if (port_file && cli_write_port_file(port_file, port) != 0) {
        perror("notes_broker: cannot write the port file");
        goto done;
    }
    while (!stop_requested)
        sigsuspend(&old);
    logf_(MDG_LOG_INFO, "stopping");
    status = 0;

done:
    /* No more confirmations, then the broker: destroy joins its thread,
     * and session_closed and node_left run for every session and node
     * still connected, which frees their data (so the model goes after
     * the broker). The store goes last: both used it. */
    mdg_account_server_destroy(&accounts);
    mdg_broker_destroy(&b);
    the_broker = NULL;
    mdg_identity_destroy(&id);
    mdg_keys_destroy(&keys);
    model_free(&notes);
    return status;
}
