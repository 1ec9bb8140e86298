/* messidge - the user's command-line tool.
 *
 *   messidge confirm LOCATION TOKEN [--port N] [--prefix DIR] [--force]
 *   messidge keygen NAME [--prefix DIR] [--force]
 *   messidge call [--location L] [--broker L2]... [--port N] [--prefix DIR] [--node NAME|PK_B64]
 *                 [--timeout MS] [--params JSON] [--legacy] COMMAND [key=value|key:=JSON ...]
 *   messidge nodes [--location L] [--broker L2]... [--port N] [--prefix DIR] [--timeout MS]
 *
 * Options are parsed by hand rather than with getopt: invitation tokens are
 * URL-safe base64 and may start with '-', which getopt would take for an
 * option. Only the exact "--name" spellings below are options; "--" ends
 * them.
 */
#include "messidge.h"
#include "messidge_identity.h"

#include "cli_util.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "json_params.h"

#define DEFAULT_TIMEOUT_MS 10000
/* How long `call` waits to learn whether anything listens at the broker's
 * address before leaving it to the connection (and its timeout). */
#define PROBE_MS 1000
#define MAX_POSITIONAL 256
#define MAX_BROKERS 15 /* --broker: with --location, the connection's 16 */

static const char usage_text[] =
    "usage: messidge COMMAND [ARGS] [OPTIONS]\n"
    "\n"
    "Commands:\n"
    "  confirm LOCATION TOKEN [--port N] [--prefix DIR] [--force]\n"
    "      Create an account at the broker LOCATION (host name or address) with\n"
    "      an invitation TOKEN from its admin (`messidge-admin invite`). Makes a\n"
    "      key pair, sends its public key to the account server on port N\n"
    "      (default 2021), and saves PREFIX/LOCATION, LOCATION.pub, the broker's\n"
    "      key LOCATION.spub and default_location. Refuses to replace an existing\n"
    "      key pair for LOCATION unless --force is given.\n"
    "  keygen NAME [--prefix DIR] [--force]\n"
    "      Make a key pair PREFIX/NAME (secret, mode 0600) and NAME.pub, and print\n"
    "      the public key. Refuses to replace an existing NAME unless --force.\n"
    "  call [--location L] [--broker L2]... [--port N] [--prefix DIR] [--node NAME|PK_B64]\n"
    "       [--timeout MS] [--params JSON] [--legacy] COMMAND [key=value|key:=JSON ...]\n"
    "      Connect to the broker at L (default: PREFIX/default_location) on\n"
    "      port N (default 2020) with the key files for L, send COMMAND with\n"
    "      the given params, wait for the reply (MS milliseconds, default\n"
    "      10000, for connecting and again for the reply) and print its params\n"
    "      as JSON (bytes as \"b64:...\", NaN and infinities as null). A broker\n"
    "      that refuses the connection or cannot be reached is reported at\n"
    "      once. --broker L2 (repeated) names another broker of the same fleet\n"
    "      on the same port, its key read from PREFIX/L2.spub: when L cannot be\n"
    "      reached the connection fails over to L2, and so on (no probe first).\n"
    "      --node adds the param node = that node's key, to address a\n"
    "      node: its name (as `messidge-admin add-node NAME` registered it,\n"
    "      see `messidge nodes`) or its public key. messidge-broker's own\n"
    "      commands: ping, nodes. --params takes a JSON object of params;\n"
    "      key:=JSON one param's value as JSON (arrays, maps, any type), e.g.\n"
    "          'xs:=[1, 2.5, \"a\"]'   'opts:={\"deep\": true}'\n"
    "      --legacy speaks Messidge 1.x, to an original Python broker (which has\n"
    "      no `nodes`: give --node a key there).\n"
    "      key=value values are typed:\n"
    "          42, -7          integers\n"
    "          1.5, -0.25      floats (numbers containing '.')\n"
    "          true false null\n"
    "          b64:AAEC        bytes (standard base64)\n"
    "          str:42          the string \"42\"\n"
    "          anything else   a string\n"
    "      When the handler fails the call, its error text goes to stderr and\n"
    "      the exit status is 1.\n"
    "  nodes [--location L] [--broker L2]... [--port N] [--prefix DIR] [--timeout MS] [--legacy]\n"
    "      List the nodes connected to the broker (messidge-broker's `nodes`\n"
    "      command): one line each, name and public key.\n"
    "  help\n"
    "      Show this text (also --help).\n"
    "  version\n"
    "      Print the version (also --version).\n"
    "\n"
    "Common options:\n"
    "  --prefix DIR   key directory (default $MESSIDGE_PREFIX or ~/.messidge)\n"
    "  --             end of options\n"
    "\n"
    "Library log lines are shown when MDG_LOG_LEVEL is set (0-3).\n"
    "\n"
    "Exit status: 0 on success, 1 on failure, 2 on a usage error.\n";

/* Everything any subcommand may be given. */
typedef struct args {
    const char *port, *prefix, *location, *node, *timeout, *params;
    bool force, legacy;
    const char *brokers[MAX_BROKERS]; /* --broker, in order */
    int nbrokers;
    char *pos[MAX_POSITIONAL];
    int npos;
} args;

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("messidge: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n(see messidge --help)\n", stderr);
    return 2;
}

static int fail(const char *what, int rc)
{
    const char *detail = mdg_last_error();
    fprintf(stderr, "messidge: %s: %s\n", what, *detail ? detail : mdg_strerror(rc));
    return 1;
}

static void close_conn(mdg_conn **conn)
{
    if (*conn)
        mdg_conn_disconnect(*conn);
    mdg_conn_destroy(conn);
}

/* Split argv into options (only those in `allowed`, a space-separated list
 * of names) and positional arguments. 0 or a usage error (2). */
static int parse(int argc, char **argv, const char *allowed, args *a)
{
    static const struct {
        const char *name;
        size_t field; /* offsetof into args */
        bool flag;    /* takes no value: field is a bool */
    } opts[] = {
        {"port", offsetof(args, port), false},       {"prefix", offsetof(args, prefix), false},
        {"location", offsetof(args, location), false}, {"node", offsetof(args, node), false},
        {"timeout", offsetof(args, timeout), false}, {"params", offsetof(args, params), false},
        {"force", offsetof(args, force), true}, {"legacy", offsetof(args, legacy), true},
        {"broker", 0, false}, /* repeated: appended to brokers */
    };
    bool options_done = false;

    memset(a, 0, sizeof *a);
    for (int i = 0; i < argc; i++) {
        char *arg = argv[i], *value = NULL, name[32];
        size_t k, n;

        if (options_done || strncmp(arg, "--", 2) != 0) {
            if (a->npos == MAX_POSITIONAL)
                return usage_error("too many arguments");
            a->pos[a->npos++] = arg;
            continue;
        }
        if (arg[2] == '\0') {
            options_done = true;
            continue;
        }
        n = strcspn(arg + 2, "=");
        if (n >= sizeof name)
            return usage_error("unknown option %s", arg);
        memcpy(name, arg + 2, n);
        name[n] = '\0';
        if (arg[2 + n] == '=')
            value = arg + 3 + n;
        /* Is it allowed for this command? Match whole words only. */
        const char *hit = strstr(allowed, name);
        while (hit && ((hit != allowed && hit[-1] != ' ') || (hit[n] && hit[n] != ' ')))
            hit = strstr(hit + 1, name);
        if (!hit || n == 0)
            return usage_error("unknown option %s here", arg);
        for (k = 0; k < sizeof opts / sizeof opts[0]; k++)
            if (strcmp(opts[k].name, name) == 0)
                break;
        if (k == sizeof opts / sizeof opts[0])
            return usage_error("unknown option %s", arg);
        if (opts[k].flag) {
            if (value)
                return usage_error("--%s takes no value", name);
            *(bool *)((char *)a + opts[k].field) = true;
            continue;
        }
        if (!value) {
            if (i + 1 >= argc)
                return usage_error("option --%s needs a value", name);
            value = argv[++i];
        }
        if (strcmp(name, "broker") == 0) {
            if (a->nbrokers == MAX_BROKERS)
                return usage_error("at most %d --broker", MAX_BROKERS);
            a->brokers[a->nbrokers++] = value;
            continue;
        }
        *(const char **)((char *)a + opts[k].field) = value;
    }
    return 0;
}

/* A positive number in [1, max] from an option, or a usage error. */
static int parse_number(const char *text, const char *what, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < 1 || v > max)
        return usage_error("%s wants a number from 1 to %ld, not \"%s\"", what, max, text);
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------ confirm */

static int cmd_confirm(int argc, char **argv)
{
    args a;
    long port = 0;
    int rc;

    if ((rc = parse(argc, argv, "port prefix force", &a)) != 0)
        return rc;
    if (a.npos != 2)
        return usage_error("confirm takes LOCATION and TOKEN");
    if (a.port && (rc = parse_number(a.port, "--port", 65535, &port)) != 0)
        return rc;
    rc = mdg_create_account(a.pos[0], (int)port, a.pos[1], a.prefix,
                            a.force ? MDG_ACCOUNT_OVERWRITE : 0);
    if (rc != 0)
        return fail("cannot create the account", rc);
    char dir[PATH_MAX];
    if (mdg_prefix_path(dir, sizeof dir, a.prefix) != 0)
        snprintf(dir, sizeof dir, "the key directory");
    printf("account created at %s; keys saved in %s (default location: %s)\n", a.pos[0], dir,
           a.pos[0]);
    return 0;
}

/* ------------------------------------------------------------------- keygen */

static int cmd_keygen(int argc, char **argv)
{
    char dir[PATH_MAX], path[PATH_MAX + 64], b64[MDG_KEY_B64_LEN + 1];
    struct stat st;
    mdg_keys *keys = NULL;
    args a;
    int rc;

    if ((rc = parse(argc, argv, "prefix force", &a)) != 0)
        return rc;
    if (a.npos != 1)
        return usage_error("keygen takes one NAME");
    if ((rc = mdg_prefix_path(dir, sizeof dir, a.prefix)) != 0)
        return fail("cannot find the key directory", rc);
    snprintf(path, sizeof path, "%s/%s", dir, a.pos[0]);
    if (!a.force && lstat(path, &st) == 0) {
        fprintf(stderr, "messidge: key file %s exists; --force replaces it (and loses the old key)\n",
                path);
        return 1;
    }
    if ((rc = mdg_keys_new(&keys)) != 0 || (rc = mdg_keys_save(keys, a.pos[0], a.prefix)) != 0) {
        mdg_keys_destroy(&keys);
        return fail("cannot make the key pair", rc);
    }
    mdg_pk_to_b64(mdg_keys_public(keys), b64);
    mdg_keys_destroy(&keys);
    puts(b64);
    return 0;
}

/* --------------------------------------------------------------------- call */

static int set_param_json(mdg_params *p, const char *key, const char *text);

/* Put "key=value" (or "key:=JSON") into p with the typing rules of the
 * help text. */
static int set_param(mdg_params *p, const char *kv)
{
    const char *eq = strchr(kv, '=');
    char key[256], *end;
    const char *v;
    int rc;

    if (!eq || eq == kv)
        return usage_error("\"%s\" is not key=value", kv);
    if ((size_t)(eq - kv) >= sizeof key)
        return usage_error("param name in \"%.40s...\" is too long", kv);
    memcpy(key, kv, (size_t)(eq - kv));
    key[eq - kv] = '\0';
    v = eq + 1;
    if (eq[-1] == ':' && eq - kv > 1) {
        key[eq - kv - 1] = '\0'; /* key:=JSON */
        return set_param_json(p, key, v);
    }

    if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0) {
        rc = mdg_params_set_bool(p, key, v[0] == 't');
    } else if (strcmp(v, "null") == 0) {
        rc = mdg_params_set_null(p, key);
    } else if (strncmp(v, "str:", 4) == 0) {
        rc = mdg_params_set_str(p, key, v + 4);
    } else if (strncmp(v, "b64:", 4) == 0) {
        size_t len = strlen(v + 4), bin_len = 0;
        uint8_t *bin = malloc(len / 4 * 3 + 3);
        if (!bin)
            return fail("out of memory", MDG_ENOMEM);
        if (sodium_base642bin(bin, len / 4 * 3 + 3, v + 4, len, NULL, &bin_len, NULL,
                              sodium_base64_VARIANT_ORIGINAL) != 0) {
            free(bin);
            return usage_error("param %s: \"%s\" is not standard base64", key, v + 4);
        }
        rc = mdg_params_set_bytes(p, key, bin, bin_len);
        free(bin);
    } else {
        errno = 0;
        long long i = strtoll(v, &end, 10);
        if (*v && !*end && !errno && strchr("+-0123456789", *v)) {
            rc = mdg_params_set_int(p, key, (int64_t)i);
        } else {
            errno = 0;
            double d = strtod(v, &end);
            if (strchr(v, '.') && *v && !*end && !errno && isfinite(d) &&
                strchr("+-.0123456789", *v))
                rc = mdg_params_set_double(p, key, d);
            else
                rc = mdg_params_set_str(p, key, v);
        }
    }
    return rc ? fail("cannot set a param", rc) : 0;
}

/* A JSON value for param key (key:=JSON or a member of --params). */
static int set_param_json(mdg_params *p, const char *key, const char *text)
{
    json_error_t err;
    json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err);
    if (!v)
        return usage_error("param %s: not JSON (%s): %s", key, err.text, text);
    cbor_item_t *item = json_params_to_cbor(v);
    json_decref(v);
    if (!item)
        return fail("out of memory", MDG_ENOMEM);
    int rc = mdg_params_set_item(p, key, item); /* item taken */
    return rc ? fail("cannot set a param", rc) : 0;
}

/* --params '{"a": [1, 2], ...}': every member a param. */
static int set_params_object(mdg_params *p, const char *text)
{
    json_error_t err;
    json_t *v = json_loads(text, JSON_REJECT_DUPLICATES, &err);
    const char *key;
    json_t *member;
    if (!v || !json_is_object(v)) {
        json_decref(v);
        return usage_error("--params wants a JSON object (%s)", v ? "not an object" : err.text);
    }
    json_object_foreach(v, key, member)
    {
        cbor_item_t *item = json_params_to_cbor(member);
        int rc = item ? mdg_params_set_item(p, key, item) : MDG_ENOMEM;
        if (rc) {
            json_decref(v);
            return fail("cannot set a param", rc);
        }
    }
    json_decref(v);
    return 0;
}

/* Is anything listening at location:port? A refused or unreachable broker
 * is told at once (the connection itself would retry until its timeout);
 * no answer within budget_ms is left to the connection to judge. 0, or 1
 * after saying why. */
static int probe_broker(const char *location, int port, int budget_ms)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res, *ai;
    char service[16];
    int err = 0, rc;

    snprintf(service, sizeof service, "%d", port);
    if ((rc = getaddrinfo(location, service, &hints, &res)) != 0) {
        fprintf(stderr, "messidge: cannot find the broker's address %s: %s\n", location,
                gai_strerror(rc));
        return 1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            err = 0;
        } else if (errno == EINPROGRESS) {
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            socklen_t len = sizeof err;
            if (poll(&pf, 1, budget_ms) <= 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                err = EINPROGRESS; /* no verdict in time */
        } else {
            err = errno;
        }
        close(fd);
        if (err == 0 || err == EINPROGRESS)
            break; /* open, or no verdict: the connection goes on */
    }
    freeaddrinfo(res);
    if (err == 0 || err == EINPROGRESS)
        return 0;
    fprintf(stderr, "messidge: cannot connect to the broker at %s port %d: %s%s\n", location, port,
            strerror(err), err == ECONNREFUSED ? " (is messidge-broker running there?)" : "");
    return 1;
}

/* Connect with the options of a (location, port, prefix, timeout) and
 * wait for a session. 0 with *out, or the exit status. */
static int open_conn(const args *a, long timeout, mdg_conn **out)
{
    char location[256];
    mdg_conn_options co = {.port = MDG_DEFAULT_PORT, .legacy = a->legacy ? MDG_LEGACY_USER : 0};
    long port;
    int rc;

    *out = NULL;
    if (a->port) {
        if ((rc = parse_number(a->port, "--port", 65535, &port)) != 0)
            return rc;
        co.port = (int)port;
    }
    if (a->location) {
        snprintf(location, sizeof location, "%s", a->location);
    } else if ((rc = mdg_default_location(location, sizeof location, a->prefix)) != 0) {
        return fail("no --location and no default location (run `messidge confirm` first)", rc);
    }
    /* with other brokers to fail over to, the first may well be down */
    if (!a->nbrokers && probe_broker(location, co.port, timeout < PROBE_MS ? (int)timeout : PROBE_MS) != 0)
        return 1;
    if ((rc = mdg_conn_new(out, location, a->prefix, &co)) != 0)
        return fail("cannot set up the connection", rc);
    for (int i = 0; i < a->nbrokers; i++) {
        uint8_t pk[MDG_KEY_BYTES];
        if ((rc = mdg_server_pk_load(pk, a->brokers[i], a->prefix)) != 0 ||
            (rc = mdg_conn_add_broker(*out, a->brokers[i], 0, pk)) != 0) {
            fail(a->brokers[i], rc);
            close_conn(out);
            return 1;
        }
    }
    if ((rc = mdg_conn_start(*out)) != 0) {
        fail("cannot start the connection", rc);
    } else if ((rc = mdg_conn_wait_until_ready(*out, (int)timeout)) != 0) {
        fail("cannot connect to the broker", rc);
        if (rc == MDG_EAUTH)
            fprintf(stderr, "(is this key revoked, or its account not yet confirmed?)\n");
        else if (rc == MDG_EBUSY)
            fprintf(stderr, "(it serves as many connections as it may: try again later)\n");
    }
    if (rc != 0) {
        close_conn(out);
        return 1;
    }
    return 0;
}

/* Call the broker's `nodes`: 0 with its "nodes" array read as JSON (the
 * reply's shape is then checked by jansson's getters; the caller decrefs
 * *reply), or 1 after saying why. */
static int call_nodes(mdg_conn *conn, long timeout, json_t **reply, json_t **nodes)
{
    mdg_msg *msg = NULL;
    int rc = mdg_conn_call(conn, "nodes", NULL, NULL, 0, (int)timeout, &msg);
    *reply = *nodes = NULL;
    if (rc == MDG_EREMOTE) {
        fprintf(stderr, "messidge: the broker has no `nodes` command (%s): is it messidge-broker?\n",
                mdg_last_error());
        return 1;
    }
    if (rc != 0)
        return fail("cannot list the nodes", rc);
    *reply = json_params_value(mdg_msg_params(msg));
    mdg_msg_destroy(&msg);
    if (!*reply) {
        fprintf(stderr, "messidge: cannot read the broker's list of nodes (out of memory)\n");
        return 1;
    }
    *nodes = json_object_get(*reply, "nodes");
    return 0;
}

/* --node NAME: the public key of the one connected node of that name. */
static int node_by_name(mdg_conn *conn, long timeout, const char *name, uint8_t pk[MDG_KEY_BYTES])
{
    json_t *reply, *nodes, *e;
    int found = 0;
    size_t i;
    if (call_nodes(conn, timeout, &reply, &nodes) != 0)
        return 1;
    json_array_foreach(nodes, i, e)
    {
        const char *n = json_string_value(json_object_get(e, "name"));
        const char *k = json_string_value(json_object_get(e, "pk"));
        if (n && k && strcmp(n, name) == 0 && mdg_pk_from_b64(pk, k) == 0)
            found++;
    }
    json_decref(reply);
    if (found == 1)
        return 0;
    if (found == 0)
        fprintf(stderr, "messidge: no node named \"%s\" is connected (see messidge nodes)\n", name);
    else
        fprintf(stderr, "messidge: %d connected nodes are named \"%s\": give --node the key\n", found,
                name);
    return 1;
}

static int cmd_call(int argc, char **argv)
{
    mdg_params *params = NULL;
    mdg_conn *conn = NULL;
    mdg_msg *reply = NULL;
    long timeout = DEFAULT_TIMEOUT_MS;
    uint8_t node_pk[MDG_KEY_BYTES];
    bool node_named = false;
    args a;
    int rc, status = 1;

    if ((rc = parse(argc, argv, "location broker port prefix node timeout params legacy", &a)) != 0)
        return rc;
    if (a.npos < 1)
        return usage_error("call needs a COMMAND");
    if (a.timeout && (rc = parse_number(a.timeout, "--timeout", 24L * 3600 * 1000, &timeout)) != 0)
        return rc;
    if (a.node && mdg_pk_from_b64(node_pk, a.node) != 0)
        node_named = true; /* not a key: a name, looked up once connected */

    params = mdg_params_new();
    if (!params)
        return fail("out of memory", MDG_ENOMEM);
    rc = a.params ? set_params_object(params, a.params) : 0;
    for (int i = 1; rc == 0 && i < a.npos; i++)
        rc = set_param(params, a.pos[i]);
    if (rc != 0) {
        mdg_params_destroy(&params);
        return rc;
    }

    if ((status = open_conn(&a, timeout, &conn)) != 0) {
        mdg_params_destroy(&params);
        return status;
    }
    status = 1;
    if (a.node && node_named && node_by_name(conn, timeout, a.node, node_pk) != 0)
        goto done;
    if (a.node)
        mdg_params_set_bytes(params, "node", node_pk, MDG_KEY_BYTES);
    rc = mdg_conn_call(conn, a.pos[0], params, NULL, 0, (int)timeout, &reply);
    params = NULL; /* taken */
    if (rc == MDG_EREMOTE) {
        fprintf(stderr, "%s\n", mdg_last_error());
        goto done;
    }
    if (rc != 0) {
        fail("the call failed", rc);
        goto done;
    }
    char *text = json_params_text(mdg_msg_params(reply));
    if (!text) {
        fail("cannot print the reply", MDG_ENOMEM);
        goto done;
    }
    puts(text);
    free(text);
    size_t bulk_len;
    if (mdg_msg_bulk(reply, &bulk_len) && bulk_len > 0)
        fprintf(stderr, "(the reply also carries %zu bytes of bulk data, not shown)\n", bulk_len);
    status = 0;
done:
    mdg_msg_destroy(&reply);
    mdg_params_destroy(&params);
    close_conn(&conn);
    return status;
}

/* -------------------------------------------------------------------- nodes */

static int cmd_nodes(int argc, char **argv)
{
    long timeout = DEFAULT_TIMEOUT_MS;
    mdg_conn *conn = NULL;
    args a;
    int rc;

    if ((rc = parse(argc, argv, "location broker port prefix timeout legacy", &a)) != 0)
        return rc;
    if (a.npos != 0)
        return usage_error("nodes takes no arguments");
    if (a.timeout && (rc = parse_number(a.timeout, "--timeout", 24L * 3600 * 1000, &timeout)) != 0)
        return rc;
    if ((rc = open_conn(&a, timeout, &conn)) != 0)
        return rc;
    json_t *reply, *nodes, *e;
    size_t i;
    rc = call_nodes(conn, timeout, &reply, &nodes);
    json_array_foreach(nodes, i, e)
    {
        const char *name = json_string_value(json_object_get(e, "name"));
        const char *pk = json_string_value(json_object_get(e, "pk"));
        printf("%-20s %s\n", name && *name ? name : "(no name)", pk ? pk : "?");
    }
    if (rc == 0 && json_array_size(nodes) == 0)
        fprintf(stderr, "messidge: no nodes are connected\n");
    json_decref(reply);
    close_conn(&conn);
    return rc;
}

/* --------------------------------------------------------------------- main */

/* The tool reports errors itself; library log lines only on request. */
static void quiet_log(int level, const char *text, void *arg)
{
    (void)level;
    (void)text;
    (void)arg;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : NULL;

    if (!getenv("MDG_LOG_LEVEL"))
        mdg_set_log(quiet_log, NULL, MDG_LOG_ERROR);

    if (!cmd)
        return usage_error("no command given");
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        cli_print_version("messidge");
        return 0;
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], "--help") == 0) {
            fputs(usage_text, stdout);
            return 0;
        }
    }
    if (strcmp(cmd, "confirm") == 0)
        return cmd_confirm(argc - 2, argv + 2);
    if (strcmp(cmd, "keygen") == 0)
        return cmd_keygen(argc - 2, argv + 2);
    if (strcmp(cmd, "call") == 0)
        return cmd_call(argc - 2, argv + 2);
    if (strcmp(cmd, "nodes") == 0)
        return cmd_nodes(argc - 2, argv + 2);
    return usage_error("unknown command \"%s\"", cmd);
}
