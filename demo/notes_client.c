/* notes_client.c - the demo client of "Using Messidge", in C.
 *
 * The guide's client, step by step: connect to the default location, write
 * a note (fire and forget), fetch the notes with a blocking call, fetch
 * them again with a reply callback, and see a handler's failure come back
 * as an error from a blocking call. Then the guide's "Resource offers and
 * Calling Nodes": take the nodes the broker offered (the command
 * resource_offer, pushed at the start of the session) and ask each to
 * divide, once well and once by zero.
 *
 *   notes_client [--prefix DIR] [--port N] [--require-node]
 */
#include "messidge.h"

#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_MS 10000
#define OFFER_WAIT_MS 5000 /* how long to wait for the resource offer */

/* ------------------------------------------------ printing like Python */

/* repr() of a Python str: single quotes unless the text has a single
 * quote and no double quote; backslash escapes for the rest. */
static void print_py_str(FILE *f, const char *s, size_t len)
{
    bool has_sq = memchr(s, '\'', len) != NULL, has_dq = memchr(s, '"', len) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    fputc(q, f);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\' || c == (unsigned char)q)
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\r')
            fputs("\\r", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\x%02x", c);
        else
            fputc(c, f); /* UTF-8 passes through, as Python prints it */
    }
    fputc(q, f);
}

/* str() of a Python list of str: ['a', 'b']. Other items (not expected
 * here) fall back to the library's text form. */
static void print_py_list(FILE *f, const cbor_item_t *list)
{
    fputc('[', f);
    for (size_t i = 0; i < cbor_array_size(list); i++) {
        cbor_item_t *it = cbor_array_handle(list)[i];
        if (i)
            fputs(", ", f);
        if (cbor_isa_string(it) && cbor_string_is_definite(it)) {
            print_py_str(f, (const char *)cbor_string_handle(it), cbor_string_length(it));
        } else {
            char *t = mdg_item_to_text(it);
            fputs(t ? t : "?", f);
            free(t);
        }
    }
    fputc(']', f);
}

/* str() of a Python float: the shortest text that reads back as the same
 * double, fixed notation for exponents -4..15 (with ".0" when there is no
 * fraction), else scientific: 2.0, 0.1, 1e-05, 1e+16, inf, nan. */
static void print_py_float(FILE *f, double d)
{
    char buf[64];
    int prec;
    if (isnan(d) || isinf(d)) {
        fputs(isnan(d) ? "nan" : d < 0 ? "-inf" : "inf", f);
        return;
    }
    /* the fewest significant digits that round-trip */
    for (prec = 1; prec < 17; prec++) {
        snprintf(buf, sizeof buf, "%.*e", prec - 1, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    snprintf(buf, sizeof buf, "%.*e", prec - 1, d);
    int exp = atoi(strchr(buf, 'e') + 1);
    if (exp < -4 || exp >= 16) {
        fputs(buf, f); /* C's %e writes the exponent as Python does: e+16, e-05 */
        return;
    }
    int decimals = prec - 1 - exp;
    snprintf(buf, sizeof buf, "%.*f", decimals > 0 ? decimals : 0, d);
    fputs(buf, f);
    if (!strchr(buf, '.'))
        fputs(".0", f);
}

/* The 'notes' list of a fetch_notes reply, or NULL if it has none. */
static const cbor_item_t *notes_of(const mdg_msg *reply)
{
    const cbor_item_t *notes = mdg_params_get(mdg_msg_params(reply), "notes");
    return notes && cbor_isa_array(notes) ? notes : NULL;
}

/* ------------------------------------------------------ async callback */

typedef struct callback_state {
    pthread_mutex_t print_lock; /* see main: keeps the guide's print order */
    atomic_bool done;
    atomic_bool ok;
} callback_state;

/* Runs on the connection's loop thread, as in the original Python Messidge. */
static void async_callback(mdg_msg *reply, void *arg)
{
    callback_state *s = arg;
    const cbor_item_t *notes = notes_of(reply);
    pthread_mutex_lock(&s->print_lock);
    if (mdg_msg_is_error(reply) || !notes) {
        fprintf(stderr, "notes_client: async fetch_notes failed: %s\n",
                mdg_msg_error(reply) ? mdg_msg_error(reply) : "no 'notes' in the reply");
    } else {
        fputs("Async callback: ", stdout);
        print_py_list(stdout, notes);
        fputc('\n', stdout);
        fflush(stdout);
        atomic_store(&s->ok, true);
    }
    pthread_mutex_unlock(&s->print_lock);
    atomic_store(&s->done, true);
}

/* ------------------------------------------------------ resource offer */

/* The original Python Messidge's client Controller: self.nodes, set by _resource_offer. The
 * offer arrives on the loop thread; main reads it, hence the lock. */
typedef struct offered_nodes {
    pthread_mutex_t lock;
    bool offered;                   /* an offer has arrived */
    uint8_t (*pks)[MDG_KEY_BYTES];  /* the node keys offered */
    size_t n;
} offered_nodes;

static void h_resource_offer(mdg_msg *msg, void *arg)
{
    offered_nodes *o = arg;
    const cbor_item_t *list = mdg_params_get(mdg_msg_params(msg), "nodes");
    if (!list || !cbor_isa_array(list)) {
        fprintf(stderr, "notes_client: resource offer without a list of nodes ignored\n");
        return;
    }
    size_t n = cbor_array_size(list), got = 0;
    uint8_t(*pks)[MDG_KEY_BYTES] = n ? calloc(n, sizeof *pks) : NULL;
    if (n && !pks) {
        fprintf(stderr, "notes_client: out of memory: resource offer ignored\n");
        return;
    }
    /* This broker offers node keys as 32-byte strings; skip anything else. */
    for (size_t i = 0; i < n; i++) {
        const cbor_item_t *it = cbor_array_handle(list)[i];
        if (cbor_isa_bytestring(it) && cbor_bytestring_is_definite(it) &&
            cbor_bytestring_length(it) == MDG_KEY_BYTES)
            memcpy(pks[got++], cbor_bytestring_handle(it), MDG_KEY_BYTES);
    }
    pthread_mutex_lock(&o->lock);
    free(o->pks); /* a later offer replaces the earlier one */
    o->pks = pks;
    o->n = got;
    o->offered = true;
    pthread_mutex_unlock(&o->lock);
}

/* The original Python Messidge's commands = {b'resource_offer': cmd(['nodes'])}: the broker
 * may push these to us. */
static const mdg_cmd client_commands[] = {
    {"resource_offer", h_resource_offer, MDG_REQUIRE("nodes"), 0},
    MDG_CMD_END,
};

/* A blocking divide on the node pk: 0 with *quotient, or the call's error
 * (MDG_EREMOTE: the node's text is in mdg_last_error()). */
static int divide(mdg_conn *conn, const uint8_t pk[MDG_KEY_BYTES], double dividend,
                  double devisor, double *quotient)
{
    mdg_msg *reply = NULL;
    mdg_params *p = mdg_params_new();
    int rc;
    /* {'node': node_pk, 'dividend': ..., 'devisor': ...}: the broker sees
     * 'node' and forwards the call to that node */
    if (!p || mdg_params_set_bytes(p, "node", pk, MDG_KEY_BYTES) != 0 ||
        mdg_params_set_double(p, "dividend", dividend) != 0 ||
        mdg_params_set_double(p, "devisor", devisor) != 0) {
        mdg_params_destroy(&p);
        return MDG_ENOMEM;
    }
    if ((rc = mdg_conn_call(conn, "divide", p, NULL, 0, TIMEOUT_MS, &reply)) != 0)
        return rc;
    rc = mdg_params_get_double(mdg_msg_params(reply), "quotient", quotient);
    mdg_msg_destroy(&reply);
    return rc;
}

/* ---------------------------------------------------------------- main */

static void usage(FILE *f)
{
    fprintf(f, "usage: notes_client [--prefix DIR] [--port N] [--require-node] [--legacy]\n"
               "  --prefix DIR    key directory (default $MESSIDGE_PREFIX or ~/.messidge)\n"
               "                  holding default_location and LOCATION(.pub, .spub)\n"
               "  --port N        the broker's base port (default %d)\n"
               "  --require-node  fail unless the broker offers at least one node\n"
               "  --legacy        speak Messidge 1.x, to an original Python broker\n",
            MDG_DEFAULT_PORT);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"prefix", required_argument, NULL, 'p'},
        {"port", required_argument, NULL, 'P'},
        {"require-node", no_argument, NULL, 'r'},
        {"legacy", no_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *prefix = NULL;
    mdg_conn_options co = {.port = MDG_DEFAULT_PORT};
    mdg_conn *conn = NULL;
    mdg_msg *reply = NULL;
    callback_state cbs = {.print_lock = PTHREAD_MUTEX_INITIALIZER};
    offered_nodes offer = {.lock = PTHREAD_MUTEX_INITIALIZER};
    uint8_t(*nodes)[MDG_KEY_BYTES] = NULL; /* main's copy of the offer */
    size_t n_nodes = 0;
    bool require_node = false;
    int opt, rc, status = 1;
    char *end;

    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p': prefix = optarg; break;
        case 'P':
            co.port = (int)strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || co.port < 1 || co.port > 65535) {
                fprintf(stderr, "notes_client: bad port '%s'\n", optarg);
                return 1;
            }
            break;
        case 'r': require_node = true; break;
        case 'l': co.legacy = MDG_LEGACY_USER; break; /* a Python Messidge 1.x broker */
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 1;
    }

    /* conn = Connection(default_location()): location NULL means
     * PREFIX/default_location; the keys are PREFIX/LOCATION(.pub, .spub) */
    if ((rc = mdg_conn_new(&conn, NULL, prefix, &co)) != 0) {
        fprintf(stderr, "notes_client: %s: %s\n", mdg_strerror(rc), mdg_last_error());
        return 1;
    }
    /* conn.register_commands(controller, Controller.commands): before start,
     * so the offer pushed at the start of the session finds its handler */
    if ((rc = mdg_conn_register_commands(conn, client_commands, &offer)) != 0) {
        fprintf(stderr, "notes_client: %s\n", mdg_last_error());
        goto out;
    }
    /* conn.start().wait_until_ready() */
    if ((rc = mdg_conn_start(conn)) != 0 || (rc = mdg_conn_wait_until_ready(conn, TIMEOUT_MS)) != 0) {
        fprintf(stderr, "notes_client: cannot connect: %s: %s\n", mdg_strerror(rc), mdg_last_error());
        goto out;
    }

    /* an asynchronous command */
    char now[64];
    time_t t = time(NULL);
    if (!ctime_r(&t, now)) {
        fprintf(stderr, "notes_client: ctime failed\n");
        goto out;
    }
    now[strcspn(now, "\n")] = '\0'; /* Python's time.ctime() has no newline */
    mdg_params *p = mdg_params_new();
    if (!p || mdg_params_set_str(p, "note", now) != 0 ||
        (rc = mdg_conn_send(conn, "write_note", p, NULL, 0)) != 0) {
        if (!rc) /* send takes p; only a failed set leaves it ours */
            mdg_params_destroy(&p);
        fprintf(stderr, "notes_client: write_note: %s\n", mdg_last_error());
        goto out;
    }

    /* synchronous, but guaranteed to not be called before 'write_note' has
     * been processed by the broker */
    if ((rc = mdg_conn_call(conn, "fetch_notes", NULL, NULL, 0, TIMEOUT_MS, &reply)) != 0 ||
        !notes_of(reply)) {
        fprintf(stderr, "notes_client: fetch_notes: %s\n",
                rc ? mdg_last_error() : "no 'notes' in the reply");
        goto out;
    }
    fputs("Here are the notes: ", stdout);
    print_py_list(stdout, notes_of(reply));
    fputc('\n', stdout);
    fflush(stdout);
    mdg_msg_destroy(&reply);

    /* asynchronous via callback; the callback runs on the loop thread. The
     * lock makes the guide's "prints before" hold even on a fast machine. */
    pthread_mutex_lock(&cbs.print_lock);
    rc = mdg_conn_send_cb(conn, "fetch_notes", NULL, NULL, 0, async_callback, &cbs);
    if (rc == 0) {
        puts("This will print before the async callback is triggered...");
        fflush(stdout);
    }
    pthread_mutex_unlock(&cbs.print_lock);
    if (rc != 0) {
        fprintf(stderr, "notes_client: fetch_notes (async): %s\n", mdg_last_error());
        goto out;
    }

    /* an error raised by the handler comes back from a blocking call */
    rc = mdg_conn_call(conn, "raise_exception", NULL, NULL, 0, TIMEOUT_MS, &reply);
    if (rc != MDG_EREMOTE) {
        fprintf(stderr, "notes_client: raise_exception returned %d (%s), expected MDG_EREMOTE: %s\n",
                rc, mdg_strerror(rc), mdg_last_error());
        mdg_msg_destroy(&reply);
        goto out;
    }
    printf("Expected! ValueError raised because: %s\n", mdg_last_error());
    fflush(stdout);

    /* let the callback arrive before we hang up (replies come in order,
     * so it normally has already) */
    for (int i = 0; i < TIMEOUT_MS / 10 && !atomic_load(&cbs.done); i++)
        usleep(10 * 1000);
    if (!atomic_load(&cbs.ok)) {
        fprintf(stderr, "notes_client: the async callback %s\n",
                atomic_load(&cbs.done) ? "reported an error" : "never came");
        goto out;
    }

    /* Resource offers and calling nodes. The offer is not guaranteed to
     * have arrived (nor to come at all), so poll for it, bounded. It was
     * pushed right after the session opened, before any of our replies,
     * so in practice it is already here. */
    for (int i = 0; i < OFFER_WAIT_MS / 10; i++) {
        pthread_mutex_lock(&offer.lock);
        bool offered = offer.offered;
        pthread_mutex_unlock(&offer.lock);
        if (offered)
            break;
        usleep(10 * 1000);
    }
    /* take main's own copy: a new offer may replace the list meanwhile */
    pthread_mutex_lock(&offer.lock);
    bool offered = offer.offered;
    if (offer.n && (nodes = calloc(offer.n, sizeof *nodes)) != NULL) {
        memcpy(nodes, offer.pks, offer.n * sizeof *nodes);
        n_nodes = offer.n;
    }
    pthread_mutex_unlock(&offer.lock);
    if (n_nodes == 0) {
        fprintf(stderr, "notes_client: %s\n",
                offered ? "the resource offer lists no nodes" : "no resource offer arrived");
        if (require_node)
            goto out;
    }

    /* get the nodes to do something for us by passing their public key */
    for (size_t i = 0; i < n_nodes; i++) {
        double quotient = 0;
        rc = divide(conn, nodes[i], 10.0, 5.0, &quotient);
        if (rc != 0) {
            fprintf(stderr, "notes_client: divide: %s: %s\n", mdg_strerror(rc), mdg_last_error());
            goto out;
        }
        fputs("10.0/5.0=", stdout);
        print_py_float(stdout, quotient);
        fputc('\n', stdout);
        fflush(stdout);

        /* the node fails the call: its text comes back as the error */
        rc = divide(conn, nodes[i], 10.0, 0.0, &quotient);
        if (rc != MDG_EREMOTE) {
            fprintf(stderr, "notes_client: divide by zero returned %d (%s), expected MDG_EREMOTE: %s\n",
                    rc, mdg_strerror(rc), mdg_last_error());
            goto out;
        }
        printf("Expected! ValueError raised because: %s\n", mdg_last_error());
        fflush(stdout);
    }
    status = 0;

out:
    mdg_conn_disconnect(conn);
    mdg_conn_destroy(&conn); /* joins the loop thread: no more offers */
    free(offer.pks);
    free(nodes);
    return status;
}
