/* messidge-broker - a ready broker: two commands of its own (ping, nodes:
 * broker_builtin.c); it admits the users and nodes of its identity store,
 * runs the account server on the base port + 1, routes users' calls to
 * nodes and offers every new session the list of connected nodes. The
 * program a new user runs first.
 *
 * Nothing is written before the port is bound: a broker that cannot start
 * (port taken, mistyped --state) leaves no new key files nor store. A
 * PostgreSQL store (--store postgresql://...) is opened before the broker
 * starts instead, to attach it: revocations made anywhere reach this
 * broker's sessions through LISTEN/NOTIFY (mdg_identity_attach). */
#include "messidge.h"
#include "messidge_identity.h"

#include "broker_builtin.h"
#include "cli_util.h"

#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* Other brokers of a fleet given with --fleet-member, at most. */
#define FLEET_MEMBERS_MAX 256
/* The soft open-file limit goes up to this at most (from the hard one). */
#define NOFILE_CEILING (1 << 20)

static void usage(FILE *out)
{
    fprintf(out,
            "usage: messidge-broker [options]\n"
            "\n"
            "A Messidge broker that routes users' calls to nodes and offers each new\n"
            "session the public keys of the connected nodes (resource_offer). Its own\n"
            "commands: ping, and nodes (the connected nodes, by the names given with\n"
            "messidge-admin add-node): messidge call ping, messidge nodes.\n"
            "Users and nodes are admitted from the identity store (see messidge-admin).\n"
            "\n"
            "options:\n"
            "  -p, --port N          base port (default 2020; 0 = pick a free one);\n"
            "                        the account server listens on N + 1 (on a free\n"
            "                        port too when N is 0)\n"
            "  -b, --bind ADDR       address to listen on (default * = all)\n"
            "  -k, --key NAME        broker key pair name (default localhost_broker);\n"
            "                        made and saved on first run\n"
            "  -P, --prefix DIR      key directory (default $MESSIDGE_PREFIX or ~/.messidge)\n"
            "  -s, --store LOCATION  the identity store: a state directory (SQLite; default\n"
            "                        ./messidge-state) or a PostgreSQL connection URI\n"
            "                        (postgresql://USER@HOST:PORT/DB, libpq's syntax), which\n"
            "                        several brokers may share; it must exist (see\n"
            "                        messidge-admin) unless --create\n"
            "      --state DIR       the same, for a state directory\n"
            "      --create          make the identity store if there is none yet (with a\n"
            "                        URI: its tables, in an existing database)\n"
            "      --account-port N  account server port (default base port + 1; 0 = free)\n"
            "      --no-accounts     do not run the account server\n"
            "      --legacy-port N   also admit unmodified Messidge 1.x (Python) users and\n"
            "                        nodes on port N (1.x clients always use 2020, and\n"
            "                        1.x's create_account 2021: run -p 3030 --legacy-port\n"
            "                        2020 --account-port 2021); 1.x links keep 1.x's\n"
            "                        weaknesses, see docs/compatibility.md. Off by default\n"
            "      --port-file FILE  write the bound base port to FILE once serving (for\n"
            "                        scripts; the ports are also printed on stdout)\n"
            "      --max-connections N  serve at most N connections at once (default: as\n"
            "                        many as the open-file limit allows, see below)\n"
            "      --account-max-connections N  account server connections at once\n"
            "                        (default 64; more wait)\n"
            "      --account-per-address N  account server connections from one address\n"
            "                        (default 8; more are refused)\n"
            "      --account-timeout MS  an account request must be complete within MS\n"
            "                        of its connection opening (default 5000)\n"
            "      --metrics-port N  serve Prometheus metrics on http://ADDR:N/metrics and\n"
            "                        a health check on /healthz (off by default; 0 = a\n"
            "                        free port, printed with the others)\n"
            "      --metrics-bind ADDR  address of the metrics server (default 127.0.0.1)\n"
            "      --pid-file FILE   write the broker's pid to FILE once serving (removed\n"
            "                        on a clean stop)\n"
            "      --fleet URL       join a fleet of brokers through the NATS server(s) at\n"
            "                        URL (nats://HOST:PORT, comma-separated for a cluster):\n"
            "                        users of any broker call nodes of any other, and\n"
            "                        offers and nodes list the fleet's (docs/fleet.md)\n"
            "      --fleet-name NAME the fleet's name (default messidge)\n"
            "      --fleet-member KEY  another broker of the fleet, by its public key\n"
            "                        (base64, as it prints it); once for each. Fleet\n"
            "                        messages from other keys are refused\n"
            "      --syslog          log to syslog (the journal under systemd) instead of\n"
            "                        stderr\n"
            "  -v, --verbose         log sessions and refusals (-vv: debug)\n"
            "  -h, --help            this text\n"
            "      --version         print the version and exit\n"
            "\n"
            "Each connection holds a file descriptor. The broker raises its soft\n"
            "open-file limit to the hard one at start, logs how many connections that\n"
            "allows (96 descriptors are kept for the rest), and refuses more until\n"
            "some close. For more, raise the hard limit (as root: ulimit -n N in the\n"
            "shell that starts it, or LimitNOFILE=N in a systemd unit).\n"
            "\n"
            "Stop it with SIGINT or SIGTERM: sessions are closed and state is freed.\n");
}

/* Each connection holds a file descriptor: take what the hard limit
 * allows (up to NOFILE_CEILING). */
static void raise_nofile(bool verbose)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > NOFILE_CEILING ? NOFILE_CEILING : rl.rlim_max;
    if (rl.rlim_cur > was && setrlimit(RLIMIT_NOFILE, &rl) == 0 && verbose)
        cli_log(MDG_LOG_INFO, "raised the open-file limit from %llu to %llu", (unsigned long long)was,
                (unsigned long long)rl.rlim_cur);
}

static int fail(const char *what, int rc)
{
    cli_log(MDG_LOG_ERROR, "%s: %s (%s)", what, mdg_last_error(), mdg_strerror(rc));
    return 1;
}

int main(int argc, char **argv)
{
    enum {
        OPT_ACCOUNT_PORT = 256,
        OPT_NO_ACCOUNTS,
        OPT_PORT_FILE,
        OPT_LEGACY_PORT,
        OPT_MAX_CONNS,
        OPT_ACCOUNT_MAX_CONNS,
        OPT_ACCOUNT_PER_ADDRESS,
        OPT_ACCOUNT_TIMEOUT,
        OPT_VERSION,
        OPT_CREATE,
        OPT_SYSLOG,
        OPT_METRICS_PORT,
        OPT_METRICS_BIND,
        OPT_PID_FILE,
        OPT_FLEET,
        OPT_FLEET_NAME,
        OPT_FLEET_MEMBER,
    };
    static const struct option longopts[] = {
        {"port", required_argument, NULL, 'p'},
        {"bind", required_argument, NULL, 'b'},
        {"key", required_argument, NULL, 'k'},
        {"prefix", required_argument, NULL, 'P'},
        {"state", required_argument, NULL, 's'},
        {"store", required_argument, NULL, 's'},
        {"create", no_argument, NULL, OPT_CREATE},
        {"syslog", no_argument, NULL, OPT_SYSLOG},
        {"metrics-port", required_argument, NULL, OPT_METRICS_PORT},
        {"metrics-bind", required_argument, NULL, OPT_METRICS_BIND},
        {"pid-file", required_argument, NULL, OPT_PID_FILE},
        {"fleet", required_argument, NULL, OPT_FLEET},
        {"fleet-name", required_argument, NULL, OPT_FLEET_NAME},
        {"fleet-member", required_argument, NULL, OPT_FLEET_MEMBER},
        {"account-port", required_argument, NULL, OPT_ACCOUNT_PORT},
        {"no-accounts", no_argument, NULL, OPT_NO_ACCOUNTS},
        {"port-file", required_argument, NULL, OPT_PORT_FILE},
        {"legacy-port", required_argument, NULL, OPT_LEGACY_PORT},
        {"max-connections", required_argument, NULL, OPT_MAX_CONNS},
        {"account-max-connections", required_argument, NULL, OPT_ACCOUNT_MAX_CONNS},
        {"account-per-address", required_argument, NULL, OPT_ACCOUNT_PER_ADDRESS},
        {"account-timeout", required_argument, NULL, OPT_ACCOUNT_TIMEOUT},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    mdg_broker_options bo = {.bind_address = "*", .port = MDG_DEFAULT_PORT};
    mdg_account_server_options ao = {0};
    const char *key_name = "localhost_broker", *prefix = NULL, *state = NULL, *port_file = NULL;
    int account_port = -1, verbose = 0, opt, rc, status = 1;
    bool accounts = true, create = false, new_keys = false, use_syslog = false;
    int metrics_port = -1; /* off */
    const char *metrics_bind = "127.0.0.1", *pid_file = NULL;
    mdg_metrics_server *ms = NULL;
    mdg_keys *keys = NULL;
    mdg_identity *id = NULL;
    mdg_broker *b = NULL;
    mdg_account_server *as = NULL;
    broker_builtin *bb = NULL;
    mdg_fleet_options fo = {0};
    static uint8_t members[FLEET_MEMBERS_MAX][MDG_KEY_BYTES]; /* not on the heap: any early exit is clean */
    size_t n_members = 0;

    while ((opt = getopt_long(argc, argv, "p:b:k:P:s:vh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p':
        case OPT_ACCOUNT_PORT:
            if ((*(opt == 'p' ? &bo.port : &account_port) = cli_parse_port(optarg)) < 0) {
                fprintf(stderr, "messidge-broker: bad port \"%s\" (0 to 65535)\n", optarg);
                return 2;
            }
            break;
        case 'b': bo.bind_address = optarg; break;
        case 'k': key_name = optarg; break;
        case 'P': prefix = optarg; break;
        case 's': state = optarg; break;
        case OPT_LEGACY_PORT:
            if ((bo.legacy_port = cli_parse_port(optarg)) < 0) {
                fprintf(stderr, "messidge-broker: bad legacy port \"%s\" (0 to 65535)\n", optarg);
                return 2;
            }
            bo.legacy = true;
            break;
        case OPT_MAX_CONNS:
        case OPT_ACCOUNT_MAX_CONNS:
        case OPT_ACCOUNT_PER_ADDRESS:
        case OPT_ACCOUNT_TIMEOUT: {
            int *field = opt == OPT_MAX_CONNS           ? &bo.max_connections
                         : opt == OPT_ACCOUNT_MAX_CONNS ? &ao.max_connections
                         : opt == OPT_ACCOUNT_PER_ADDRESS ? &ao.max_per_address
                                                          : &ao.request_timeout_ms;
            if ((*field = cli_parse_int(optarg, 1, 100000000)) < 0) {
                fprintf(stderr, "messidge-broker: bad number \"%s\" (1 or more)\n", optarg);
                return 2;
            }
            break;
        }
        case OPT_NO_ACCOUNTS: accounts = false; break;
        case OPT_CREATE: create = true; break;
        case OPT_SYSLOG: use_syslog = true; break;
        case OPT_METRICS_BIND: metrics_bind = optarg; break;
        case OPT_PID_FILE: pid_file = optarg; break;
        case OPT_METRICS_PORT:
            if ((metrics_port = cli_parse_port(optarg)) < 0) {
                fprintf(stderr, "messidge-broker: bad metrics port \"%s\" (0 to 65535)\n", optarg);
                return 2;
            }
            break;
        case OPT_PORT_FILE: port_file = optarg; break;
        case OPT_FLEET: fo.url = optarg; break;
        case OPT_FLEET_NAME: fo.name = optarg; break;
        case OPT_FLEET_MEMBER:
            if (n_members == FLEET_MEMBERS_MAX) {
                fprintf(stderr, "messidge-broker: at most %d --fleet-member\n", FLEET_MEMBERS_MAX);
                return 2;
            }
            if (mdg_pk_from_b64(members[n_members], optarg) != 0) {
                fprintf(stderr, "messidge-broker: bad fleet member key \"%s\" (base64 of 32 bytes)\n", optarg);
                return 2;
            }
            n_members++;
            break;
        case 'v': verbose++; break;
        case 'h': usage(stdout); return 0;
        case OPT_VERSION: cli_print_version("messidge-broker"); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    if (!fo.url && (fo.name || n_members)) {
        fprintf(stderr, "messidge-broker: --fleet-name and --fleet-member need --fleet URL\n");
        return 2;
    }
    if (use_syslog)
        cli_log_to_syslog("messidge-broker", verbose ? (verbose > 1 ? MDG_LOG_DEBUG : MDG_LOG_INFO) : -1);
    else if (verbose)
        mdg_set_log(NULL, NULL, verbose > 1 ? MDG_LOG_DEBUG : MDG_LOG_INFO);
    raise_nofile(verbose);
    /* SIGINT/SIGTERM are taken by sigwait below: block them before any
     * thread starts, so that every thread inherits the mask. */
    sigset_t stop_signals;
    cli_block_stop_signals(&stop_signals);

    /* A mistyped --state would make an empty store that refuses every
     * client: only with --create (as messidge-admin). */
    bool shared = cli_store_is_uri(state);
    char db[4096];
    struct stat st;
    snprintf(db, sizeof db, "%s/%s", state ? state : MDG_DEFAULT_STATE_DIR, MDG_IDENTITY_DB_FILE);
    if (!shared && !create && stat(db, &st) != 0) {
        cli_log(MDG_LOG_ERROR, "no identity store at %s: pass the right --state DIR (or --create to make a new one)",
                db);
        goto out;
    }

    /* the original Python Messidge's "fetch/create the server keys"; a new
     * pair is saved once the port is bound */
    rc = mdg_keys_load(&keys, key_name, prefix);
    if (rc == MDG_ENOENT) {
        if ((rc = mdg_keys_new(&keys))) {
            fail("cannot make the broker's keys", rc);
            goto out;
        }
        new_keys = true;
    } else if (rc) {
        fail("cannot load the broker's keys", rc);
        goto out;
    }
    char pk_b64[MDG_KEY_B64_LEN + 1];
    mdg_pk_to_b64(mdg_keys_public(keys), pk_b64);

    /* keys are admitted from the store (once it is open, below);
     * revocations close live sessions */
    if ((rc = mdg_broker_new(&b, keys, &bo)) || (rc = broker_builtin_new(&bb, b))) {
        fail("cannot make the broker", rc);
        goto out;
    }
    if (fo.url && (rc = mdg_broker_join_fleet(b, &fo))) {
        fail("cannot join the fleet", rc);
        goto out;
    }
    for (size_t i = 0; i < n_members; i++)
        if ((rc = mdg_broker_fleet_member(b, members[i]))) {
            fail("cannot add a fleet member", rc);
            goto out;
        }
    /* A shared store is attached before the broker runs (its listening
     * connection joins the broker's loop); it writes nothing locally. */
    if (shared && (rc = mdg_identity_open_ex(&id, state, create ? MDG_IDENTITY_CREATE : 0))) {
        if (rc == MDG_ENOENT)
            cli_log(MDG_LOG_ERROR, "%s: pass the right --store URI (or --create to make the store there)",
                    mdg_last_error());
        else
            fail("cannot open the identity store", rc);
        goto out;
    }
    if (shared && ((rc = broker_builtin_set_store(bb, id, false)) || (rc = mdg_identity_attach(id, b)))) {
        fail("cannot attach the identity store", rc);
        goto out;
    }
    if ((rc = mdg_broker_start(b))) {
        fail("cannot start the broker", rc);
        goto out;
    }
    /* bound: now the store and the keys may be written */
    if (!shared && ((rc = mdg_identity_open(&id, state)) || (rc = broker_builtin_set_store(bb, id, true)))) {
        fail("cannot open the identity store", rc);
        goto out;
    }
    if (new_keys) {
        if ((rc = mdg_keys_save(keys, key_name, prefix))) {
            fail("cannot save the broker's keys", rc);
            goto out;
        }
        cli_log(MDG_LOG_INFO, "made a new key pair '%s'", key_name);
    }
    int port = mdg_broker_port(b);

    if (accounts) {
        /* base port + 1; but a free base port (0) has no fixed neighbour:
         * the port after a random one is often taken (by an outgoing
         * connection, or one in TIME_WAIT), so then a free one too. */
        ao.port = account_port >= 0 ? account_port : bo.port == 0 ? 0 : port + 1;
        ao.bind_address = strcmp(bo.bind_address, "*") == 0 ? NULL : bo.bind_address;
        if ((rc = mdg_account_server_new_opts(&as, id, mdg_keys_public(keys), &ao))) {
            fail("cannot start the account server", rc);
            goto out;
        }
    }
    if (metrics_port >= 0 && (rc = mdg_metrics_server_new(&ms, b, metrics_bind, metrics_port))) {
        fail("cannot start the metrics server", rc);
        goto out;
    }
    printf("messidge-broker: listening on port %d", port);
    if (as)
        printf(", accounts on port %d", mdg_account_server_port(as));
    if (bo.legacy)
        printf(", Messidge 1.x on port %d", mdg_broker_legacy_port(b));
    if (ms)
        printf(", metrics on port %d", mdg_metrics_server_port(ms));
    if (fo.url)
        printf(", fleet \"%s\" through %s", fo.name ? fo.name : "messidge", fo.url);
    printf("\nmessidge-broker: broker public key %s\n", pk_b64);
    fflush(stdout);
    if (port_file && cli_write_port_file(port_file, port) != 0) {
        cli_log(MDG_LOG_ERROR, "cannot write the port file %s", port_file);
        goto out;
    }
    if (pid_file && cli_write_port_file(pid_file, (int)getpid()) != 0) {
        cli_log(MDG_LOG_ERROR, "cannot write the pid file %s", pid_file);
        goto out;
    }

    /* the loop runs on the broker's thread; wait here for a signal */
    int sig = 0;
    sigwait(&stop_signals, &sig);
    cli_log(MDG_LOG_INFO, "%s, stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    status = 0;

out:
    /* on every way out: no leaks, and the store closes last (both the
     * account server and the broker's ZAP handler use it) */
    mdg_metrics_server_destroy(&ms);
    mdg_account_server_destroy(&as);
    mdg_broker_destroy(&b);
    if (pid_file && status == 0)
        unlink(pid_file);
    broker_builtin_destroy(&bb);
    mdg_identity_destroy(&id);
    mdg_keys_destroy(&keys);
    if (status == 0)
        cli_log(MDG_LOG_INFO, "stopped");
    return status;
}
