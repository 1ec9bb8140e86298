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
 * and prints the user's public key (base64) on stdout, for the broker's
 * --allow-pk. localhost.spub and default_location are overwritten.
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
    mdg_keys *broker = NULL, *user = NULL;
    char b64[MDG_KEY_B64_LEN + 1];
    int opt, rc;

    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p': prefix = optarg; break;
        case 'h':
            puts("usage: demo_setup [--prefix DIR]\n"
                 "  Makes the notes demo's keys in DIR (default $MESSIDGE_PREFIX or\n"
                 "  ~/.messidge) and prints the user's public key.");
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
        (rc = mdg_default_location_save(LOCATION, prefix)) != 0) {
        fprintf(stderr, "demo_setup: %s: %s\n", mdg_strerror(rc), mdg_last_error());
    } else {
        mdg_pk_to_b64(mdg_keys_public(user), b64);
        puts(b64);
    }
    mdg_keys_destroy(&broker);
    mdg_keys_destroy(&user);
    return rc ? 1 : 0;
}
