/* divide_node.c - the divide node of "Using Messidge", in C.
 *
 * A node is a connection like a client's, with a command table: the broker
 * forwards to it every user call that names it in the param 'node', and
 * routes its replies back to the calling session. This one serves
 *
 *   divide  {dividend, devisor}  reply {quotient: dividend / devisor}
 *
 * and fails the call (the original Python Messidge's ValueError, reflected to the caller) when
 * the params are not two floats or the devisor is zero.
 *
 * No key files: a node's keys come from the environment (preferred: the
 * secret is then not visible to other users in `ps`) or the command line.
 *
 *   MESSIDGE_NODE_PK, MESSIDGE_NODE_SK   the node's key pair (base64)
 *   MESSIDGE_BROKER_PK                   the broker's public key (base64)
 *
 *   divide_node [--node-pk B64] [--node-sk B64] [--broker-pk B64]
 *               [--location HOST] [--port N] [--legacy]
 *
 * It prints "divide_node: node ready" on stdout once the broker has given
 * it a session, and runs until SIGINT or SIGTERM.
 */
#include "../tools/cli_util.h"
#include "messidge.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------------------- controller */

/* The original Python Messidge's Controller._divide. The table below has already checked that
 * both params are present; their types are ours to check. Integers are not
 * floats here, as in the original Python Messidge's isinstance(..., float). */
static void h_divide(mdg_msg *msg, void *arg)
{
    (void)arg;
    const mdg_params *p = mdg_msg_params(msg);
    double dividend, devisor;

    if (mdg_params_get_double(p, "dividend", &dividend) != 0 ||
        mdg_params_get_double(p, "devisor", &devisor) != 0) {
        mdg_msg_fail(msg, "Divide only takes two floats.");
        return;
    }
    if (devisor == 0) {
        mdg_msg_fail(msg, "Devisor cannot be zero");
        return;
    }

    mdg_params *results = mdg_params_new();
    if (!results || mdg_params_set_double(results, "quotient", dividend / devisor) != 0) {
        mdg_params_destroy(&results);
        mdg_msg_fail(msg, "out of memory");
        return;
    }
    mdg_msg_reply(msg, results, NULL, 0); /* results taken */
}

/* The original Python Messidge's Controller.commands: {b'divide': cmd(['dividend', 'devisor'],
 * needs_reply=True)}. */
static const mdg_cmd commands[] = {
    {"divide", h_divide, MDG_REQUIRE("dividend", "devisor"), MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* -------------------------------------------------------------------- main */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: divide_node [options]\n"
            "  --node-pk B64    the node's public key   (or env MESSIDGE_NODE_PK)\n"
            "  --node-sk B64    the node's secret key   (or env MESSIDGE_NODE_SK;\n"
            "                   prefer the environment: argv is visible in ps)\n"
            "  --broker-pk B64  the broker's public key (or env MESSIDGE_BROKER_PK)\n"
            "  --location HOST  the broker's host (default localhost)\n"
            "  --port N         the broker's base port (default %d)\n"
            "  --help           this text\n"
            "  --version        print the version and exit\n"
            "  --legacy         speak Messidge 1.x, to an original Python broker (the\n"
            "                   node link is then plaintext, as 1.x's)\n"
            "Prints 'divide_node: node ready' once connected; runs until SIGINT or SIGTERM.\n",
            MDG_DEFAULT_PORT);
}

int main(int argc, char **argv)
{
    enum { O_NODE_PK = 1, O_NODE_SK, O_BROKER_PK, O_LOCATION, O_PORT, O_HELP, O_VERSION, O_LEGACY };
    static const struct option longopts[] = {
        {"node-pk", required_argument, NULL, O_NODE_PK},
        {"node-sk", required_argument, NULL, O_NODE_SK},
        {"broker-pk", required_argument, NULL, O_BROKER_PK},
        {"location", required_argument, NULL, O_LOCATION},
        {"port", required_argument, NULL, O_PORT},
        {"help", no_argument, NULL, O_HELP},
        {"version", no_argument, NULL, O_VERSION},
        {"legacy", no_argument, NULL, O_LEGACY},
        {NULL, 0, NULL, 0},
    };
    /* the environment first; the command line overrides it */
    const char *node_pk = getenv("MESSIDGE_NODE_PK");
    const char *node_sk = getenv("MESSIDGE_NODE_SK");
    const char *broker_pk = getenv("MESSIDGE_BROKER_PK");
    const char *location = "localhost";
    mdg_conn_options co = {.port = MDG_DEFAULT_PORT, .reflect_errors = true};
    uint8_t server_pk[MDG_KEY_BYTES];
    char b64[MDG_KEY_B64_LEN + 1];
    mdg_keys *keys = NULL;
    mdg_conn *conn = NULL;
    cli_signal_waiter waiter;
    int opt, rc, status = 1;
    char *end;

    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case O_NODE_PK: node_pk = optarg; break;
        case O_NODE_SK: node_sk = optarg; break;
        case O_BROKER_PK: broker_pk = optarg; break;
        case O_LOCATION: location = optarg; break;
        case O_PORT:
            co.port = (int)strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || co.port < 1 || co.port > 65535) {
                fprintf(stderr, "divide_node: bad port '%s'\n", optarg);
                return 1;
            }
            break;
        case O_HELP: usage(stdout); return 0;
        case O_VERSION: cli_print_version("divide_node"); return 0;
        case O_LEGACY: co.legacy = MDG_LEGACY_NODE; break; /* a Python Messidge 1.x broker */
        default: usage(stderr); return 1;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 1;
    }
    if (!node_pk || !node_sk || !broker_pk) {
        fprintf(stderr, "divide_node: the node's key pair and the broker's public key are needed\n"
                        "  (MESSIDGE_NODE_PK, MESSIDGE_NODE_SK, MESSIDGE_BROKER_PK, or --help)\n");
        return 1;
    }

    /* KeyPair(public=pk, secret=sk); the pair is checked to match */
    if ((rc = mdg_keys_from_b64(&keys, node_pk, node_sk)) != 0) {
        fprintf(stderr, "divide_node: node keys: %s\n", mdg_last_error());
        return 1;
    }
    if (mdg_pk_from_b64(server_pk, broker_pk) != 0) {
        fprintf(stderr, "divide_node: the broker's public key is not a base64 32-byte key\n");
        mdg_keys_destroy(&keys);
        return 1;
    }

    /* Block the stop signals before any thread starts, so that every
     * thread (the connection's too) inherits the mask and only the
     * waiter's sigwait takes them. */
    cli_signal_waiter_init(&waiter, "divide_node");

    /* The original Python Messidge's Node.__init__: Connection(location, server_pk, keys,
     * reflect_value_errors=True), register_commands, start. */
    mdg_pk_to_b64(mdg_keys_public(keys), b64);
    rc = mdg_conn_new_with_keys(&conn, location, server_pk, keys, &co);
    mdg_keys_destroy(&keys); /* the connection keeps a copy */
    if (rc != 0 || (rc = mdg_conn_register_commands(conn, commands, NULL)) != 0 ||
        (rc = mdg_conn_start(conn)) != 0) {
        fprintf(stderr, "divide_node: %s: %s\n", mdg_strerror(rc), mdg_last_error());
        goto out;
    }
    if (cli_signal_waiter_start(&waiter, conn) != 0) {
        fprintf(stderr, "divide_node: cannot start the signal thread\n");
        goto out;
    }

    /* A node needs no wait_until_ready; waiting here only tells the user
     * (and run-demo.sh) when the broker has admitted us. It returns early
     * on a refused key or a wrong broker key, or when a stop signal
     * disconnects us first. */
    rc = mdg_conn_wait_until_ready(conn, -1);
    if (rc == 0) {
        printf("divide_node: node ready (node %s, broker %s port %d)\n", b64, location, co.port);
        fflush(stdout);
        /* Node.run(): wait_until_complete - the loop thread serves the
         * commands until we disconnect or the broker ends the session. */
        rc = mdg_conn_wait_until_complete(conn, -1);
    }

    /* Stop the signal thread if it is still waiting (the connection ended
     * on its own, or could not be made). */
    if (cli_signal_waiter_stop(&waiter)) {
        status = 0; /* asked to stop: the normal way out */
    } else if (rc != 0) {
        fprintf(stderr, "divide_node: cannot connect: %s: %s\n", mdg_strerror(rc), mdg_last_error());
    } else {
        /* the broker closed the session (e.g. the key was revoked); the
         * library has logged its reason */
        fprintf(stderr, "divide_node: the broker ended the session\n");
    }

out:
    cli_signal_waiter_stop(&waiter); /* still running only on an error path above */
    /* Node.disconnect(): say goodbye, flushing any last replies */
    mdg_conn_disconnect(conn);
    mdg_conn_destroy(&conn);
    mdg_keys_destroy(&keys);
    return status;
}
