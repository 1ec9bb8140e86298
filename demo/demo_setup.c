/* demo_setup.c - prepare a key directory for the notes demo.
 *
 * TEMPORARY: stands in for the account server until it exists (a later
 * issue: `messidge-admin invite` on the broker's side, `messidge confirm`
 * on the user's). It does by hand what those two will do over the network:
 *
 *   PREFIX/localhost_broker(.pub)   the broker's key pair (kept if present)
 *   PREFIX/localhost(.pub)          the user's key pair for location
 *                                   'localhost' (kept if present)
 *   PREFIX/localhost.spub           the broker's public key, pinned
 *   PREFIX/default_location         'localhost'
 *
 * localhost.spub and default_location are overwritten. It also makes a new
 * key pair for the divide node, which is NOT saved: nodes take their keys
 * from the environment, not from key files. On stdout, one per line:
 *
 *   USER_PK=B64     the user's public key, for the broker's --allow-pk
 *   NODE_PK=B64     the node's public key, for --allow-node-pk and the node
 *   NODE_SK=B64     the node's secret key, for the node only
 *   BROKER_PK=B64   the broker's public key, for the node
 *
 * The node's secret is printed, never passed as an argument: read stdout
 * through a pipe (run-demo.sh puts it in the node's environment).
 *
 *   demo_setup [--prefix DIR]
 */
#include "messidge.h"

#include <getopt.h>
#include <stdio.h>

#define BROKER_NAME "localhost_broker"
#define LOCATION "localhost"

/* Load the pair NAME, or make and save a new one (the seed's try/except). */
static int load_or_make(mdg_keys **keys, const char *name, const char *prefix)
{
    int rc = mdg_keys_load(keys, name, prefix);
    if (rc != MDG_ENOENT)
        return rc;
    if ((rc = mdg_keys_new(keys)) != 0)
        return rc;
    if ((rc = mdg_keys_save(*keys, name, prefix)) != 0)
        mdg_keys_destroy(keys);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"prefix", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *prefix = NULL;
    mdg_keys *broker = NULL, *user = NULL, *node = NULL;
    char b64[MDG_KEY_B64_LEN + 1];
    int opt, rc;

    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p': prefix = optarg; break;
        case 'h':
            puts("usage: demo_setup [--prefix DIR]\n"
                 "  Makes the notes demo's keys in DIR (default $MESSIDGE_PREFIX or\n"
                 "  ~/.messidge), a key pair for the divide node (not saved), and\n"
                 "  prints USER_PK=, NODE_PK=, NODE_SK= and BROKER_PK= lines.");
            return 0;
        default:
            fputs("usage: demo_setup [--prefix DIR]\n", stderr);
            return 1;
        }
    }
    if (optind < argc) {
        fputs("usage: demo_setup [--prefix DIR]\n", stderr);
        return 1;
    }

    if ((rc = load_or_make(&broker, BROKER_NAME, prefix)) != 0 ||
        (rc = load_or_make(&user, LOCATION, prefix)) != 0 ||
        (rc = mdg_server_pk_save(mdg_keys_public(broker), LOCATION, prefix)) != 0 ||
        (rc = mdg_default_location_save(LOCATION, prefix)) != 0 ||
        (rc = mdg_keys_new(&node)) != 0) {
        fprintf(stderr, "demo_setup: %s: %s\n", mdg_strerror(rc), mdg_last_error());
    } else {
        mdg_pk_to_b64(mdg_keys_public(user), b64);
        printf("USER_PK=%s\n", b64);
        mdg_pk_to_b64(mdg_keys_public(node), b64);
        printf("NODE_PK=%s\n", b64);
        /* a secret key is 32 bytes too: the same base64 form */
        mdg_pk_to_b64(mdg_keys_secret(node), b64);
        printf("NODE_SK=%s\n", b64);
        mdg_pk_to_b64(mdg_keys_public(broker), b64);
        printf("BROKER_PK=%s\n", b64);
        if (fflush(stdout) != 0) {
            perror("demo_setup: stdout");
            rc = MDG_EIO;
        }
    }
    mdg_keys_destroy(&broker);
    mdg_keys_destroy(&user);
    mdg_keys_destroy(&node);
    return rc ? 1 : 0;
}
