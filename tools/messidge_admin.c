/* messidge-admin - manage who may connect to a Messidge broker.
 *
 * Works on the broker's identity store: SQLite in its state directory, or
 * PostgreSQL by connection URI (shared by several brokers); it may run
 * while brokers run (one transaction per change; a revocation reaches
 * brokers on PostgreSQL at once, on SQLite within a second).
 *
 *   messidge-admin [--store DIR|URI] invite EMAIL [--ttl SECONDS]
 *   messidge-admin [--store DIR|URI] [--prefix DIR] add-node [NAME] [--port N]
 *   messidge-admin [--store DIR|URI] add-user EMAIL PK_B64
 *   messidge-admin [--store DIR|URI] list
 *   messidge-admin [--store DIR|URI] revoke PK_B64
 *   messidge-admin [--store DIR|URI] export-1x FILE
 * (--state DIR is the SQLite spelling of --store.)
 */
#include "messidge.h"
#include "messidge_identity.h"

#include "cli_util.h"
#include "export_1x.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_BROKER_KEY "localhost_broker"
#define DEFAULT_LOCATION "localhost"
#define DEFAULT_PROGRAM "divide_node"

static const char usage_text[] =
    "usage: messidge-admin [OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Manage who may connect to a Messidge broker: users (invited, then confirmed\n"
    "with `messidge confirm`), nodes, and revocations. Works on the broker's\n"
    "identity store (a state directory, or a PostgreSQL database shared by\n"
    "several brokers), also while brokers run.\n"
    "\n"
    "Commands:\n"
    "  invite EMAIL [--ttl SECONDS]\n"
    "      Invite a user. Prints a single-use token, valid for 7 days (or\n"
    "      SECONDS); give it to the user, who runs\n"
    "          messidge confirm LOCATION TOKEN\n"
    "      Only a hash of the token is stored: it cannot be shown again.\n"
    "  add-node [NAME] [--location L] [--port N] [--program P] [--broker-key KEY]\n"
    "      Make a key pair for a new node, register its public key under NAME\n"
    "      (`messidge nodes` and `messidge call --node NAME` use it), and print\n"
    "      the command that starts the node with it:\n"
    "          MESSIDGE_NODE_PK=.. MESSIDGE_NODE_SK=.. MESSIDGE_BROKER_PK=.. P --location L [--port N]\n"
    "      (P default " DEFAULT_PROGRAM ", L default " DEFAULT_LOCATION ", N the broker's\n"
    "      base port, default 2020). The broker's\n"
    "      public key is read from PREFIX/KEY.pub (KEY default " DEFAULT_BROKER_KEY ").\n"
    "      The node's secret key is printed once and stored nowhere.\n"
    "  add-user EMAIL PK_B64\n"
    "      Register an existing user key directly, without an invitation.\n"
    "  list\n"
    "      Show users, nodes (with revocation times) and pending invitations.\n"
    "  revoke PK_B64\n"
    "      Revoke a user or node key. It stays listed, with the time; the\n"
    "      broker refuses it from then on and ends its live sessions (every\n"
    "      broker of a PostgreSQL store at once; of a state directory, within\n"
    "      a second).\n"
    "  export-1x FILE\n"
    "      Write the admitted users and nodes to a new SQLite FILE with the\n"
    "      original Python Messidge 1.x schema, for its admin scripts and broker:\n"
    "      opening a 1.x store migrates it, one way. Revoked keys and pending\n"
    "      invitations (only their tokens' hashes are kept) are left out.\n"
    "      Works from either kind of store; FILE is always SQLite.\n"
    "\n"
    "Options:\n"
    "  --store LOCATION  the broker's identity store: its state directory\n"
    "                    (default " MDG_DEFAULT_STATE_DIR ") or a PostgreSQL\n"
    "                    connection URI, postgresql://USER@HOST:PORT/DB (libpq's\n"
    "                    syntax; a password is best kept in ~/.pgpass)\n"
    "  --state DIR       the same, for a state directory\n"
    "  --prefix DIR      key directory with the broker's key (default\n"
    "                    $MESSIDGE_PREFIX or ~/.messidge)\n"
    "  --create          make the identity store if there is none yet (else a\n"
    "                    missing store is an error: wrong --store?); with a URI,\n"
    "                    its tables in an existing database\n"
    "  --help            show this text\n"
    "  --version         print the version and exit\n"
    "\n"
    "Exit status: 0 on success, 1 on failure, 2 on a usage error.\n";

typedef struct options {
    const char *state, *prefix, *location, *program, *broker_key;
    int port; /* the broker's base port for the node's command; 0: not given */
    int64_t ttl;
    bool create;
} options;

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("messidge-admin: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n(see messidge-admin --help)\n", stderr);
    return 2;
}

static int fail(const char *what, int rc)
{
    const char *detail = mdg_last_error();
    fprintf(stderr, "messidge-admin: %s: %s\n", what, *detail ? detail : mdg_strerror(rc));
    return 1;
}

/* UTC "2024-05-01 12:00:00Z". */
static const char *fmt_time(int64_t t, char buf[32])
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm) || strftime(buf, 32, "%Y-%m-%d %H:%M:%SZ", &tm) == 0)
        snprintf(buf, 32, "%" PRId64, t);
    return buf;
}

/* ----------------------------------------------------------------- commands */

static int cmd_invite(mdg_identity *id, const options *o, char **args, int n)
{
    char token[MDG_TOKEN_LEN + 1];
    int rc;
    if (n != 1)
        return usage_error("invite takes one EMAIL");
    if ((rc = mdg_identity_invite(id, args[0], o->ttl, token, sizeof token)) != 0)
        return fail("cannot invite", rc);
    puts(token);
    return 0;
}

/* The broker's public key from PREFIX/NAME.pub. */
static int read_broker_pk(const options *o, char path[PATH_MAX], uint8_t pk[MDG_KEY_BYTES])
{
    char dir[PATH_MAX], text[256];
    size_t len;
    FILE *f;
    int rc;

    snprintf(path, PATH_MAX, "PREFIX/%s.pub", o->broker_key);
    if ((rc = mdg_prefix_path(dir, sizeof dir, o->prefix)) != 0)
        return rc;
    if (snprintf(path, PATH_MAX, "%s/%s.pub", dir, o->broker_key) >= PATH_MAX)
        return MDG_EINVAL;
    f = fopen(path, "r");
    if (!f)
        return errno == ENOENT ? MDG_ENOENT : MDG_EIO;
    len = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[len] = '\0';
    return mdg_pk_from_b64(pk, text);
}

static int cmd_add_node(mdg_identity *id, const options *o, char **args, int n)
{
    char pk_b64[MDG_KEY_B64_LEN + 1], sk_b64[MDG_KEY_B64_LEN + 1], bpk_b64[MDG_KEY_B64_LEN + 1];
    char path[PATH_MAX];
    uint8_t bpk[MDG_KEY_BYTES];
    const char *name = n >= 1 ? args[0] : "";
    mdg_keys *keys = NULL;
    bool have_broker;
    int rc;

    if (n > 1)
        return usage_error("add-node takes at most one NAME");
    have_broker = read_broker_pk(o, path, bpk) == 0;
    if ((rc = mdg_keys_new(&keys)) != 0)
        return fail("cannot make a key pair", rc);
    if ((rc = mdg_identity_add_node(id, name, mdg_keys_public(keys), NULL)) != 0) {
        mdg_keys_destroy(&keys);
        return fail("cannot register the node", rc);
    }
    mdg_pk_to_b64(mdg_keys_public(keys), pk_b64);
    mdg_pk_to_b64(mdg_keys_secret(keys), sk_b64);
    mdg_keys_destroy(&keys);
    if (have_broker)
        mdg_pk_to_b64(bpk, bpk_b64);
    else
        snprintf(bpk_b64, sizeof bpk_b64, "BROKER_PK");

    printf("node %s%s%sregistered with public key %s\n", *name ? "\"" : "", name,
           *name ? "\" " : "", pk_b64);
    printf("\nStart it with (the secret key is shown only now; keep it secret):\n\n");
    printf("MESSIDGE_NODE_PK=%s MESSIDGE_NODE_SK=%s MESSIDGE_BROKER_PK=%s %s --location %s", pk_b64,
           sk_b64, bpk_b64, o->program, o->location);
    if (o->port)
        printf(" --port %d", o->port);
    putchar('\n');
    if (!have_broker)
        printf("\nBROKER_PK is the broker's public key: the contents of\n  %s\n"
               "which was not readable here (pass --prefix DIR or --broker-key NAME).\n",
               path);
    memset(sk_b64, 0, sizeof sk_b64);
    return 0;
}

static int cmd_add_user(mdg_identity *id, char **args, int n)
{
    uint8_t pk[MDG_KEY_BYTES];
    int rc;
    if (n != 2)
        return usage_error("add-user takes EMAIL and PK_B64");
    if (mdg_pk_from_b64(pk, args[1]) != 0)
        return usage_error("\"%s\" is not a base64 public key (44 characters)", args[1]);
    if ((rc = mdg_identity_add_user(id, args[0], pk, NULL)) != 0)
        return fail("cannot add the user", rc);
    printf("user %s registered with public key %s\n", args[0], args[1]);
    return 0;
}

typedef struct list_state {
    int kind;  /* group being printed (0 before the first) */
    int count; /* entries printed in it */
    int64_t now;
} list_state;

/* Move on to group `kind`, closing the groups in between. */
static void list_advance(list_state *ls, int kind)
{
    static const char *const titles[] = {"", "users", "nodes", "pending invitations"};
    while (ls->kind < kind) {
        if (ls->kind > 0 && ls->count == 0)
            puts("  (none)");
        ls->kind++;
        ls->count = 0;
        if (ls->kind <= MDG_ENTRY_PENDING)
            printf("%s%s:\n", ls->kind > 1 ? "\n" : "", titles[ls->kind]);
    }
}

static int print_entry(const mdg_identity_entry *e, void *arg)
{
    list_state *ls = arg;
    char t1[32], t2[32];

    list_advance(ls, e->kind);
    ls->count++;
    switch (e->kind) {
    case MDG_ENTRY_USER:
    case MDG_ENTRY_NODE:
        printf("  %s  %s  created %s", e->pk_b64 ? e->pk_b64 : "?",
               *e->name ? e->name : "(no name)", fmt_time(e->created, t1));
        if (e->revoked)
            printf("  REVOKED %s", fmt_time(e->revoked, t2));
        printf("  config %s\n", e->config ? e->config : "{}");
        break;
    case MDG_ENTRY_PENDING:
        printf("  #%s  %s  created %s  %s %s\n", e->ref ? e->ref : "?", e->name,
               fmt_time(e->created, t1), e->expires <= ls->now ? "EXPIRED" : "expires",
               fmt_time(e->expires, t2));
        break;
    }
    return 0;
}

static int cmd_list(mdg_identity *id, int n)
{
    list_state ls = {0, 0, (int64_t)time(NULL)};
    int rc;
    if (n != 0)
        return usage_error("list takes no arguments");
    if ((rc = mdg_identity_list(id, print_entry, &ls)) != 0)
        return fail("cannot list", rc);
    list_advance(&ls, MDG_ENTRY_PENDING + 1); /* headings of empty groups */
    return 0;
}

static int cmd_revoke(mdg_identity *id, char **args, int n)
{
    uint8_t pk[MDG_KEY_BYTES];
    int rc;
    if (n != 1)
        return usage_error("revoke takes one PK_B64");
    if (mdg_pk_from_b64(pk, args[0]) != 0)
        return usage_error("\"%s\" is not a base64 public key (44 characters)", args[0]);
    if ((rc = mdg_identity_revoke(id, pk)) != 0)
        return fail("cannot revoke", rc);
    printf("revoked %s\n", args[0]);
    return 0;
}

/* --------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"state", required_argument, NULL, 's'},
        {"store", required_argument, NULL, 's'},
        {"prefix", required_argument, NULL, 'p'},
        {"ttl", required_argument, NULL, 't'},
        {"location", required_argument, NULL, 'l'},
        {"port", required_argument, NULL, 'n'},
        {"program", required_argument, NULL, 'P'},
        {"broker-key", required_argument, NULL, 'b'},
        {"create", no_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    options o = {.location = DEFAULT_LOCATION, .program = DEFAULT_PROGRAM,
                 .broker_key = DEFAULT_BROKER_KEY};
    mdg_identity *id = NULL;
    const char *cmd;
    char *end;
    int opt, rc, n;

    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 's': o.state = optarg; break;
        case 'p': o.prefix = optarg; break;
        case 'l': o.location = optarg; break;
        case 'n':
            if ((o.port = cli_parse_int(optarg, 1, 65535)) < 0)
                return usage_error("--port wants a port from 1 to 65535, not \"%s\"", optarg);
            break;
        case 'P': o.program = optarg; break;
        case 'b': o.broker_key = optarg; break;
        case 'c': o.create = true; break;
        case 't':
            errno = 0;
            o.ttl = strtoll(optarg, &end, 10);
            if (errno || *end || end == optarg || o.ttl <= 0)
                return usage_error("--ttl wants a positive number of seconds, not \"%s\"",
                                   optarg);
            break;
        case 'h': fputs(usage_text, stdout); return 0;
        case 'V': cli_print_version("messidge-admin"); return 0;
        default: return usage_error("unknown option");
        }
    }
    if (optind >= argc)
        return usage_error("no command given");
    cmd = argv[optind];
    n = argc - optind - 1;
    if (strcmp(cmd, "help") == 0) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (strcmp(cmd, "invite") && strcmp(cmd, "add-node") && strcmp(cmd, "add-user") &&
        strcmp(cmd, "list") && strcmp(cmd, "revoke") && strcmp(cmd, "export-1x"))
        return usage_error("unknown command \"%s\"", cmd);

    /* Opening makes a store where there is none: in the wrong place that
     * would hide the broker's real one, so only on request. */
    rc = mdg_identity_open_ex(&id, o.state, o.create ? MDG_IDENTITY_CREATE : 0);
    if (rc == MDG_ENOENT) {
        fprintf(stderr,
                "messidge-admin: %s: pass the broker's --store DIR or URI "
                "(or --create to make a new one)\n",
                mdg_last_error());
        return 1;
    }
    if (rc != 0)
        return fail("cannot open the identity store", rc);
    char **args = argv + optind + 1;
    if (strcmp(cmd, "invite") == 0)
        rc = cmd_invite(id, &o, args, n);
    else if (strcmp(cmd, "add-node") == 0)
        rc = cmd_add_node(id, &o, args, n);
    else if (strcmp(cmd, "add-user") == 0)
        rc = cmd_add_user(id, args, n);
    else if (strcmp(cmd, "export-1x") == 0)
        rc = n == 1 ? export_1x(id, args[0]) : usage_error("export-1x takes one FILE");
    else if (strcmp(cmd, "list") == 0)
        rc = cmd_list(id, n);
    else
        rc = cmd_revoke(id, args, n);
    mdg_identity_destroy(&id);
    return rc;
}
