/* test_account.c - invitations over real sockets: the account server
 * (libmicrohttpd) on a free loopback port, mdg_create_account (libcurl)
 * writing into temporary key directories, every bad request answered with
 * a 4xx "Fail: reason" and nothing stored, concurrent confirms of one token,
 * then end to end with a broker whose ZAP handler asks the identity store:
 * invite -> create_account -> connect -> call; revoked and unknown keys are
 * refused. Slow and greedy clients: five addresses trickling bytes hold a
 * server with small limits only until its request deadline. Last, when
 * they are built, the command-line tools messidge-admin and messidge drive
 * the same flow as separate processes. */
#include "messidge_identity.h"
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include <curl/curl.h>

static char base[] = "/tmp/mdg-test-account-XXXXXX";
static mdg_identity *id;
static mdg_keys *bkeys;
static mdg_account_server *srv;
static int acct_port;
static char bpk_b64[MDG_KEY_B64_LEN + 1];

/* ----------------------------------------------------------------- helpers */

static void path_in(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", base, name);
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static mode_t mode_of(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (st.st_mode & 0777) : (mode_t)-1;
}

static bool last_error_has(const char *needle)
{
    bool ok = strstr(mdg_last_error(), needle) != NULL;
    if (!ok)
        fprintf(stderr, "  last error \"%s\" lacks \"%s\"\n", mdg_last_error(), needle);
    return ok;
}

static void new_key(uint8_t pk[32], char b64[45])
{
    mdg_keys *k = NULL;
    if (mdg_keys_new(&k) != 0)
        exit(2);
    memcpy(pk, mdg_keys_public(k), 32);
    if (b64)
        mdg_pk_to_b64(pk, b64);
    mdg_keys_destroy(&k);
}

static void invite(char token[MDG_TOKEN_LEN + 1], int64_t ttl)
{
    if (mdg_identity_invite(id, "someone@example.org", ttl, token, MDG_TOKEN_LEN + 1) != 0) {
        fprintf(stderr, "cannot invite: %s\n", mdg_last_error());
        exit(2);
    }
}

static int count_user_entry(const mdg_identity_entry *e, void *arg)
{
    if (e->kind == MDG_ENTRY_USER)
        (*(int *)arg)++;
    return 0;
}

static int count_users(void)
{
    int n = 0;
    mdg_identity_list(id, count_user_entry, &n);
    return n;
}

/* ------------------------------------------------------------- raw HTTP */

typedef struct resp {
    long status;
    char body[8192];
    size_t len;
} resp;

typedef struct upload {
    const char *data;
    size_t len, off;
} upload;

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    resp *r = arg;
    size_t k = size * n;
    if (r->len + k >= sizeof r->body)
        return 0;
    memcpy(r->body + r->len, data, k);
    r->len += k;
    r->body[r->len] = '\0';
    return k;
}

static size_t on_read(char *buf, size_t size, size_t n, void *arg)
{
    upload *u = arg;
    size_t k = size * n;
    if (k > 700)
        k = 700; /* several chunks */
    if (k > u->len - u->off)
        k = u->len - u->off;
    memcpy(buf, u->data + u->off, k);
    u->off += k;
    return k;
}

/* Send one request; chunked sends the body with chunked encoding. Returns
 * curl's code; r gets the status and body. */
static CURLcode http(const char *method, const char *path, const char *body, size_t len,
                     bool chunked, resp *r)
{
    char url[128];
    upload u = {body, len, 0};
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    CURL *c = curl_easy_init();
    CURLcode cc;

    memset(r, 0, sizeof *r);
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", acct_port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        if (chunked) {
            curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
            curl_easy_setopt(c, CURLOPT_READDATA, &u);
        } else {
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
        }
    } else {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    }
    cc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    return cc;
}

static CURLcode post(const char *body, resp *r)
{
    return http("POST", "/", body, strlen(body), false, r);
}

/* A refusal: 4xx, "Fail: " and the reason. */
static bool refused(const resp *r, long status, const char *reason)
{
    bool ok = r->status == status && strncmp(r->body, "Fail: ", 6) == 0 &&
              strstr(r->body, reason) != NULL;
    if (!ok)
        fprintf(stderr, "  wanted %ld \"Fail: ...%s...\", got %ld \"%s\"\n", status, reason,
                r->status, r->body);
    return ok;
}

/* ------------------------------------------------- create_account success */

static void test_create_account(void)
{
    char p1[256], p2[256], f[300], token[MDG_TOKEN_LEN + 1], loc[64];
    uint8_t spub[32];
    mdg_keys *mine = NULL;

    path_in(p1, sizeof p1, "p1");
    invite(token, 0);
    CHECK_RC(mdg_create_account("127.0.0.1", acct_port, token, p1, 0), 0);
    CHECK(mode_of(p1) == 0700);
    snprintf(f, sizeof f, "%s/127.0.0.1", p1);
    CHECK(mode_of(f) == 0600);
    snprintf(f, sizeof f, "%s/127.0.0.1.pub", p1);
    CHECK(exists(f));
    CHECK_RC(mdg_server_pk_load(spub, "127.0.0.1", p1), 0);
    CHECK(memcmp(spub, mdg_keys_public(bkeys), 32) == 0);
    CHECK_RC(mdg_default_location(loc, sizeof loc, p1), 0);
    CHECK(strcmp(loc, "127.0.0.1") == 0);
    CHECK_RC(mdg_keys_load(&mine, "127.0.0.1", p1), 0);
    CHECK(mine && mdg_identity_role(id, mdg_keys_public(mine), NULL) == MDG_ROLE_USER);

    /* The same token again, into a fresh directory: refused, nothing written. */
    path_in(p2, sizeof p2, "p2");
    CHECK_RC(mdg_create_account("127.0.0.1", acct_port, token, p2, 0), MDG_EREMOTE);
    CHECK(last_error_has("Fail: this token has already been used"));
    CHECK(!exists(p2));

    /* An account exists for this location: refused before the server is
     * asked, so the new token is not spent... */
    char token2[MDG_TOKEN_LEN + 1];
    invite(token2, 0);
    CHECK_RC(mdg_create_account("127.0.0.1", acct_port, token2, p1, 0), MDG_ESTATE);
    CHECK(last_error_has("already an account"));
    mdg_keys *still = NULL;
    CHECK_RC(mdg_keys_load(&still, "127.0.0.1", p1), 0);
    CHECK(still && memcmp(mdg_keys_public(still), mdg_keys_public(mine), 32) == 0);
    mdg_keys_destroy(&still);
    /* ...and overwriting on purpose works with it. */
    CHECK_RC(mdg_create_account("127.0.0.1", acct_port, token2, p1, MDG_ACCOUNT_OVERWRITE), 0);
    CHECK_RC(mdg_keys_load(&still, "127.0.0.1", p1), 0);
    CHECK(still && memcmp(mdg_keys_public(still), mdg_keys_public(mine), 32) != 0);
    CHECK(still && mdg_identity_role(id, mdg_keys_public(still), NULL) == MDG_ROLE_USER);
    mdg_keys_destroy(&still);
    mdg_keys_destroy(&mine);
}

static void test_create_account_failures(void)
{
    char p[256], token[MDG_TOKEN_LEN + 1];
    int users = count_users();

    path_in(p, sizeof p, "fail");
    CHECK_RC(mdg_create_account("127.0.0.1", acct_port, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", p, 0),
             MDG_EREMOTE);
    CHECK(last_error_has("Fail: unknown token"));
    CHECK(!exists(p));

    /* No server there. */
    invite(token, 0);
    CHECK_RC(mdg_create_account("127.0.0.1", t_free_port(), token, p, 0), MDG_EIO);
    CHECK(last_error_has("cannot reach the account server"));
    CHECK(!exists(p));

    /* Bad arguments never reach the network. */
    CHECK_RC(mdg_create_account("127.0.0.1", acct_port, "has space", p, 0), MDG_EINVAL);
    CHECK_RC(mdg_create_account("a/b", acct_port, token, p, 0), MDG_EINVAL);
    CHECK_RC(mdg_create_account("", acct_port, token, p, 0), MDG_EINVAL);
    CHECK_RC(mdg_create_account("127.0.0.1", acct_port, NULL, p, 0), MDG_EINVAL);
    char nested[300];
    snprintf(nested, sizeof nested, "%s/no/such/dir", base);
    CHECK_RC(mdg_create_account("127.0.0.1", acct_port, token, nested, 0), MDG_EINVAL);
    CHECK(!exists(p));

    /* The token survived all that. */
    CHECK_RC(mdg_create_account("127.0.0.1", acct_port, token, p, 0), 0);
    CHECK(count_users() == users + 1);

    /* Expired. */
    char late[MDG_TOKEN_LEN + 1], p3[256];
    path_in(p3, sizeof p3, "late");
    invite(late, 1);
    usleep(2100 * 1000);
    CHECK_RC(mdg_create_account("127.0.0.1", acct_port, late, p3, 0), MDG_EREMOTE);
    CHECK(last_error_has("Fail: this invitation has expired"));
    CHECK(!exists(p3));
    CHECK(count_users() == users + 1);
}

/* ------------------------------------------------------- bad HTTP requests */

static void test_bad_requests(void)
{
    char token[MDG_TOKEN_LEN + 1], body[8192], pk_b64[45];
    uint8_t pk[32];
    resp r;
    int users = count_users();

    invite(token, 0);
    new_key(pk, pk_b64);

    CHECK(http("GET", "/", NULL, 0, false, &r) == CURLE_OK);
    CHECK(refused(&r, 405, "only POST"));
    CHECK(http("POST", "/other", "x y", 3, false, &r) == CURLE_OK);
    CHECK(refused(&r, 404, "unknown path"));

    CHECK(post("", &r) == CURLE_OK);
    CHECK(refused(&r, 400, "malformed request"));
    CHECK(post(token, &r) == CURLE_OK);
    CHECK(refused(&r, 400, "malformed request"));
    snprintf(body, sizeof body, "%s  %s", token, pk_b64); /* two spaces */
    CHECK(post(body, &r) == CURLE_OK);
    CHECK(refused(&r, 400, "malformed request"));
    snprintf(body, sizeof body, "%s %s extra", token, pk_b64);
    CHECK(post(body, &r) == CURLE_OK);
    CHECK(refused(&r, 400, "malformed request"));
    snprintf(body, sizeof body, "%s\t%s", token, pk_b64);
    CHECK(post(body, &r) == CURLE_OK);
    CHECK(refused(&r, 400, "malformed request"));
    /* A NUL inside the body. */
    snprintf(body, sizeof body, "%s %s", token, pk_b64);
    body[3] = '\0';
    CHECK(http("POST", "/", body, strlen(token) + 45, false, &r) == CURLE_OK);
    CHECK(refused(&r, 400, "malformed request"));

    /* Keys that are not 32 bytes. */
    snprintf(body, sizeof body, "%s AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", token); /* 31 */
    CHECK(post(body, &r) == CURLE_OK);
    CHECK(refused(&r, 400, "not a 32-byte key"));
    snprintf(body, sizeof body, "%s %s", token, "c2hvcnQ=");
    CHECK(post(body, &r) == CURLE_OK);
    CHECK(refused(&r, 400, "not a 32-byte key"));
    snprintf(body, sizeof body, "%s %.43s!", token, pk_b64);
    CHECK(post(body, &r) == CURLE_OK);
    CHECK(refused(&r, 400, "not a 32-byte key"));
    snprintf(body, sizeof body, "%s AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", token); /* zeros */
    CHECK(post(body, &r) == CURLE_OK);
    CHECK(refused(&r, 400, "all zeros"));

    /* Tokens that are not tokens, or not ours. */
    snprintf(body, sizeof body, "short %s", pk_b64);
    CHECK(post(body, &r) == CURLE_OK);
    CHECK(refused(&r, 400, "malformed token"));
    snprintf(body, sizeof body, "%s %s", "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB", pk_b64);
    CHECK(post(body, &r) == CURLE_OK);
    CHECK(refused(&r, 403, "unknown token"));

    /* Over 4 KiB, declared (Content-Length) and chunked; both carry a valid
     * request at the start, which must not be taken. */
    size_t n = (size_t)snprintf(body, sizeof body, "%s %s", token, pk_b64);
    memset(body + n, '\n', 5000 - n);
    CHECK(http("POST", "/", body, 5000, false, &r) == CURLE_OK);
    CHECK(refused(&r, 413, "over 4096 bytes"));
    CHECK(http("POST", "/", body, 5000, true, &r) == CURLE_OK);
    CHECK(refused(&r, 413, "over 4096 bytes"));
    /* Exactly at the limit is read (and refused for its shape). */
    CHECK(http("POST", "/", body, MDG_ACCOUNT_MAX_BODY, false, &r) == CURLE_OK);
    CHECK(refused(&r, 400, "malformed request"));

    /* Nothing was stored by any of that. */
    CHECK(mdg_identity_role(id, pk, NULL) == MDG_ROLE_NONE);
    CHECK(count_users() == users);

    /* The token is still good: one trailing newline is tolerated, and the
     * answer is exactly the broker key. */
    snprintf(body, sizeof body, "%s %s\r\n", token, pk_b64);
    CHECK(post(body, &r) == CURLE_OK);
    CHECK(r.status == 200 && r.len == MDG_KEY_B64_LEN && strcmp(r.body, bpk_b64) == 0);
    CHECK(mdg_identity_role(id, pk, NULL) == MDG_ROLE_USER);
    CHECK(count_users() == users + 1);

    /* Reuse, and a second token for a key already registered. */
    uint8_t pk2[32];
    char pk2_b64[45], token2[MDG_TOKEN_LEN + 1];
    new_key(pk2, pk2_b64);
    snprintf(body, sizeof body, "%s %s", token, pk2_b64);
    CHECK(post(body, &r) == CURLE_OK);
    CHECK(refused(&r, 409, "already been used"));
    invite(token2, 0);
    snprintf(body, sizeof body, "%s %s", token2, pk_b64);
    CHECK(post(body, &r) == CURLE_OK);
    CHECK(refused(&r, 409, "already registered"));
    CHECK(mdg_identity_role(id, pk2, NULL) == MDG_ROLE_NONE);
    CHECK(count_users() == users + 1);
}

/* Many clients confirm one token at once: exactly one wins. */
#define RACERS 8
static char race_token[MDG_TOKEN_LEN + 1];
static atomic_int race_ok, race_conflict, race_other;

static void *race_one(void *arg)
{
    (void)arg;
    char body[128], pk_b64[45];
    uint8_t pk[32];
    resp r;
    new_key(pk, pk_b64);
    snprintf(body, sizeof body, "%s %s", race_token, pk_b64);
    if (post(body, &r) == CURLE_OK && r.status == 200)
        atomic_fetch_add(&race_ok, 1);
    else if (r.status == 409)
        atomic_fetch_add(&race_conflict, 1);
    else
        atomic_fetch_add(&race_other, 1);
    return NULL;
}

static void test_concurrent_confirms(void)
{
    pthread_t th[RACERS];
    int users = count_users();
    invite(race_token, 0);
    for (int i = 0; i < RACERS; i++)
        pthread_create(&th[i], NULL, race_one, NULL);
    for (int i = 0; i < RACERS; i++)
        pthread_join(th[i], NULL);
    CHECK(atomic_load(&race_ok) == 1);
    CHECK(atomic_load(&race_conflict) == RACERS - 1);
    CHECK(atomic_load(&race_other) == 0);
    CHECK(count_users() == users + 1);
}

/* ---------------------------------------------------------- end to end */

static void h_whoami(mdg_msg *m, void *arg)
{
    (void)arg;
    const uint8_t *user;
    size_t len;
    mdg_params *r = mdg_params_new();
    if (mdg_params_get_bytes(mdg_msg_params(m), "user", &user, &len) == 0)
        mdg_params_set_bytes(r, "user", user, len);
    mdg_msg_reply(m, r, NULL, 0);
}

/* Echo the params the tools test sends, with their types. */
static void h_echo(mdg_msg *m, void *arg)
{
    (void)arg;
    static const char *const keys[] = {"i", "f", "s", "t", "n", "x", "forced", NULL};
    mdg_params *r = mdg_params_new();
    for (int i = 0; keys[i]; i++) {
        cbor_item_t *it = mdg_params_get(mdg_msg_params(m), keys[i]);
        if (it)
            mdg_params_set_item(r, keys[i], cbor_incref(it));
    }
    mdg_msg_reply(m, r, NULL, 0);
}

static void h_raise(mdg_msg *m, void *arg)
{
    (void)arg;
    mdg_msg_fail(m, "raise was called");
}

static const mdg_cmd cmds[] = {
    {"whoami", h_whoami, NULL, MDG_CMD_NEEDS_REPLY},
    {"echo", h_echo, NULL, MDG_CMD_NEEDS_REPLY},
    {"raise", h_raise, NULL, MDG_CMD_NEEDS_REPLY},
    MDG_CMD_END,
};

/* ------------------------------------------------ slow and greedy clients */

#define TRICKLE_DEADLINE_MS 1500 /* the small server's request_timeout_ms */
#define TRICKLE_MARGIN_MS 2500   /* its watchdog's tick, and a busy machine */
#define TRICKLERS 5              /* addresses 127.0.0.2 .. 127.0.0.6 */
#define PER_ADDRESS 2
#define TRICKLE_CONNS (TRICKLERS * PER_ADDRESS)


/* A TCP connection from the loopback address src to the account server. */
static int connect_from(const char *src)
{
    struct sockaddr_in from = {.sin_family = AF_INET}, to = {.sin_family = AF_INET};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    inet_pton(AF_INET, src, &from.sin_addr);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    to.sin_port = htons((uint16_t)acct_port);
    if (fd >= 0 && (bind(fd, (struct sockaddr *)&from, sizeof from) != 0 ||
                    connect(fd, (struct sockaddr *)&to, sizeof to) != 0)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Whether the server closed fd within ms (EOF or reset, no answer). */
static bool closed_within(int fd, int ms)
{
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    char c;
    return poll(&pf, 1, ms) == 1 && recv(fd, &c, 1, MSG_DONTWAIT) <= 0;
}

typedef struct trickle {
    int fd[TRICKLE_CONNS];
    int64_t opened[TRICKLE_CONNS], closed[TRICKLE_CONNS]; /* closed 0: still open */
    atomic_bool stop;
} trickle;

/* A byte every 100 ms on each connection, of a request that would take
 * minutes to finish, until the server closes it. */
static void *trickler(void *arg)
{
    static const char req[] = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n";
    trickle *t = arg;
    int64_t end = now_ms() + 10 * TRICKLE_DEADLINE_MS;
    for (size_t k = 0; !atomic_load(&t->stop) && now_ms() < end; k++) {
        int open = 0;
        for (int i = 0; i < TRICKLE_CONNS; i++) {
            if (t->closed[i])
                continue;
            if (closed_within(t->fd[i], 0)) {
                t->closed[i] = now_ms();
                continue;
            }
            send(t->fd[i], k < sizeof req - 1 ? &req[k] : "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            open++;
        }
        if (!open)
            break;
        usleep(100000);
    }
    return NULL;
}

static void test_slow_clients(void)
{
    mdg_account_server *small = NULL;
    mdg_account_server_options bad = {.request_timeout_ms = -1};
    CHECK_RC(mdg_account_server_new_opts(&small, id, mdg_keys_public(bkeys), &bad), MDG_EINVAL);
    /* the main server runs with the defaults, and says so */
    CHECK(t_logged("(at most 64 connections, 8 per address, 5000 ms per request)"));

    mdg_account_server_options o = {.bind_address = "127.0.0.1",
                                    .max_connections = TRICKLE_CONNS,
                                    .max_per_address = PER_ADDRESS,
                                    .request_timeout_ms = TRICKLE_DEADLINE_MS};
    CHECK_RC(mdg_account_server_new_opts(&small, id, mdg_keys_public(bkeys), &o), 0);
    if (!small)
        return;
    int main_port = acct_port;
    acct_port = mdg_account_server_port(small);
    t_clear_log();

    /* Each address may hold PER_ADDRESS connections; one more is closed at
     * once and logged. The five fill the server. */
    trickle t = {0};
    char src[16];
    int n = 0;
    for (int a = 0; a < TRICKLERS; a++) {
        snprintf(src, sizeof src, "127.0.0.%d", a + 2);
        for (int k = 0; k < PER_ADDRESS; k++, n++) {
            t.fd[n] = connect_from(src);
            t.opened[n] = now_ms();
            CHECK(t.fd[n] >= 0);
        }
        if (a == 0) {
            int extra = connect_from(src);
            CHECK(extra >= 0 && closed_within(extra, TRICKLE_MARGIN_MS));
            close(extra);
            CHECK(t_logged("account server: refused a connection from 127.0.0.2: 2 already open"));
        }
    }
    pthread_t th;
    pthread_create(&th, NULL, trickler, &t);

    /* A sixth client waits (the server is full) but not for longer than
     * the request deadline: the tricklers are cut then. */
    resp r;
    int64_t t0 = now_ms();
    CHECK(post("not a token", &r) == CURLE_OK);
    int64_t waited = now_ms() - t0;
    printf("  a client behind %d trickling connections was answered after %lld ms (deadline %d ms)\n",
           TRICKLE_CONNS, (long long)waited, TRICKLE_DEADLINE_MS);
    CHECK(refused(&r, 400, "malformed request"));
    CHECK(waited >= TRICKLE_DEADLINE_MS / 2); /* it did wait: the server was full */
    CHECK(waited <= TRICKLE_DEADLINE_MS + TRICKLE_MARGIN_MS);

    atomic_store(&t.stop, true);
    pthread_join(th, NULL);
    int cut = 0;
    for (int i = 0; i < TRICKLE_CONNS; i++) {
        if (!t.closed[i] && closed_within(t.fd[i], TRICKLE_MARGIN_MS))
            t.closed[i] = now_ms();
        cut += t.closed[i] && t.closed[i] - t.opened[i] <= TRICKLE_DEADLINE_MS + TRICKLE_MARGIN_MS;
        close(t.fd[i]);
    }
    printf("  %d of %d trickling connections cut within the deadline\n", cut, TRICKLE_CONNS);
    CHECK(cut == TRICKLE_CONNS);
    CHECK(t_logged("account server: at its connection limit (10 open"));
    CHECK(t_logged("account server: cut a connection from 127.0.0."));
    CHECK(t_logged("not complete 1500 ms after it opened"));

    mdg_account_server_destroy(&small);
    acct_port = main_port;
}

static mdg_broker *broker;

static int connect_and_wait(const char *prefix, const mdg_keys *keys)
{
    mdg_conn *c = NULL;
    mdg_conn_options o = {.port = mdg_broker_port(broker)};
    int rc = keys ? mdg_conn_new_with_keys(&c, "127.0.0.1", mdg_keys_public(bkeys), keys, &o)
                  : mdg_conn_new(&c, "127.0.0.1", prefix, &o);
    if (rc == 0 && (rc = mdg_conn_start(c)) == 0)
        rc = mdg_conn_wait_until_ready(c, 5000);
    mdg_conn_destroy(&c);
    return rc;
}

static void test_end_to_end(void)
{
    char p[256], token[MDG_TOKEN_LEN + 1];
    mdg_broker_options bo = {.bind_address = "127.0.0.1", .port = 0};
    mdg_conn_options o;
    mdg_conn *c = NULL;
    mdg_keys *mine = NULL, *stranger = NULL;
    mdg_msg *reply = NULL;

    CHECK_RC(mdg_broker_new(&broker, bkeys, &bo), 0);
    CHECK_RC(mdg_broker_set_commands(broker, cmds, NULL), 0);
    CHECK_RC(mdg_broker_set_auth(broker, mdg_identity_auth, id), 0);
    CHECK_RC(mdg_broker_start(broker), 0);
    o = (mdg_conn_options){.port = mdg_broker_port(broker)};

    /* invite -> create_account -> connect -> call */
    path_in(p, sizeof p, "e2e");
    invite(token, 0);
    CHECK_RC(mdg_create_account("127.0.0.1", acct_port, token, p, 0), 0);
    CHECK_RC(mdg_keys_load(&mine, "127.0.0.1", p), 0);
    CHECK_RC(mdg_conn_new(&c, "127.0.0.1", p, &o), 0);
    CHECK_RC(mdg_conn_start(c), 0);
    CHECK_RC(mdg_conn_wait_until_ready(c, 5000), 0);
    CHECK_RC(mdg_conn_call(c, "whoami", NULL, NULL, 0, 5000, &reply), 0);
    const uint8_t *user = NULL;
    size_t len = 0;
    CHECK(reply && mdg_params_get_bytes(mdg_msg_params(reply), "user", &user, &len) == 0);
    CHECK(len == 32 && mine && memcmp(user, mdg_keys_public(mine), 32) == 0);
    mdg_msg_destroy(&reply);
    mdg_conn_disconnect(c);
    mdg_conn_destroy(&c);

    /* An unknown key cannot connect. */
    CHECK_RC(mdg_keys_new(&stranger), 0);
    CHECK_RC(connect_and_wait(NULL, stranger), MDG_EAUTH);
    mdg_keys_destroy(&stranger);

    /* Revoked: the same key files no longer get in. */
    CHECK_RC(mdg_identity_revoke(id, mdg_keys_public(mine)), 0);
    CHECK_RC(connect_and_wait(p, NULL), MDG_EAUTH);
    mdg_keys_destroy(&mine);
}

/* ------------------------------------------------------------- the tools */

#if defined(MDG_ADMIN_BIN) && defined(MDG_CLI_BIN)

static bool has(const char *out, const char *needle)
{
    bool ok = strstr(out, needle) != NULL;
    if (!ok)
        fprintf(stderr, "  output lacks \"%s\":\n%s\n", needle, out);
    return ok;
}

static void test_tools(void)
{
    char state[256], p[256], keys[256], out[8192], token[64], f[300];
    const char *A = MDG_ADMIN_BIN, *M = MDG_CLI_BIN;
    int bport = mdg_broker_port(broker);

    path_in(state, sizeof state, "state");
    path_in(p, sizeof p, "tools-user");
    path_in(keys, sizeof keys, "tools-broker-keys");

    /* Help names every subcommand; misuse is exit 2. */
    CHECK(t_run(out, sizeof out, "%s --help", A) == 0);
    CHECK(has(out, "invite EMAIL") && has(out, "add-node") && has(out, "list") &&
          has(out, "revoke PK_B64") && has(out, "--state"));
    CHECK(t_run(out, sizeof out, "%s --help", M) == 0);
    CHECK(has(out, "confirm LOCATION TOKEN") && has(out, "keygen NAME") && has(out, "call"));
    CHECK(t_run(out, sizeof out, "%s --state %s frobnicate", A, state) == 2);
    CHECK(t_run(out, sizeof out, "%s --state %s invite", A, state) == 2);
    CHECK(t_run(out, sizeof out, "%s confirm onlyone", M) == 2);
    CHECK(t_run(out, sizeof out, "%s call --bogus x cmd", M) == 2);
    /* A state directory without a store is a mistake unless --create. */
    CHECK(t_run(out, sizeof out, "%s --state %s/nostate list", A, base) == 1);
    CHECK(has(out, "no identity store"));
    CHECK(t_run(out, sizeof out, "%s --state %s/newstate --create list", A, base) == 0);
    CHECK(has(out, "users:\n  (none)") && has(out, "nodes:\n  (none)"));

    /* invite with the admin tool, confirm with the client tool. */
    CHECK(t_run(out, sizeof out, "%s --state %s invite tools@example.org", A, state) == 0);
    CHECK(sscanf(out, "%63s", token) == 1 && strlen(token) == MDG_TOKEN_LEN);
    CHECK(t_run(out, sizeof out, "%s confirm 127.0.0.1 %s --port %d --prefix %s", M, token,
              acct_port, p) == 0);
    snprintf(f, sizeof f, "%s/127.0.0.1", p);
    CHECK(mode_of(f) == 0600);
    CHECK(t_run(out, sizeof out, "%s confirm 127.0.0.1 %s --port %d --prefix %s/again", M, token,
              acct_port, base) == 1);
    CHECK(has(out, "Fail: this token has already been used"));

    /* The admin tool sees the new user (another process, same store). */
    mdg_keys *mine = NULL;
    char pk_b64[45];
    CHECK_RC(mdg_keys_load(&mine, "127.0.0.1", p), 0);
    mdg_pk_to_b64(mine ? mdg_keys_public(mine) : (const uint8_t *)"", pk_b64);
    mdg_keys_destroy(&mine);
    CHECK(t_run(out, sizeof out, "%s --state %s list", A, state) == 0);
    CHECK(has(out, "users:") && has(out, pk_b64) && has(out, "tools@example.org") &&
          has(out, "nodes:") && has(out, "pending invitations:"));

    /* call: typed params out, JSON in; the default location is used. */
    CHECK(t_run(out, sizeof out,
              "%s call --prefix %s --port %d echo i=-42 f=1.5 s=hello t=true n=null "
              "x=b64:AAEC forced=str:42",
              M, p, bport) == 0);
    CHECK(has(out, "\"i\": -42") && has(out, "\"f\": 1.5") && has(out, "\"s\": \"hello\"") &&
          has(out, "\"t\": true") && has(out, "\"n\": null") && has(out, "\"x\": \"b64:AAEC\"") &&
          has(out, "\"forced\": \"42\""));
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d --location 127.0.0.1 raise", M, p,
              bport) == 1);
    CHECK(has(out, "raise was called"));
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d echo x=b64:!!", M, p, bport) == 2);

    /* keygen */
    CHECK(t_run(out, sizeof out, "%s keygen localhost_broker --prefix %s", M, keys) == 0);
    CHECK(strlen(out) == MDG_KEY_B64_LEN + 1);
    snprintf(f, sizeof f, "%s/localhost_broker", keys);
    CHECK(mode_of(f) == 0600);
    CHECK(t_run(out, sizeof out, "%s keygen localhost_broker --prefix %s", M, keys) == 1);
    CHECK(has(out, "exists"));

    /* add-node: with and without a broker key to show. */
    char bpk[45] = "";
    snprintf(f, sizeof f, "%s/localhost_broker.pub", keys);
    FILE *fp = fopen(f, "r");
    CHECK(fp && fread(bpk, 1, 44, fp) == 44);
    if (fp)
        fclose(fp);
    CHECK(t_run(out, sizeof out, "%s --state %s --prefix %s add-node divider", A, state, keys) == 0);
    char expect[128];
    snprintf(expect, sizeof expect, "MESSIDGE_BROKER_PK=%s divide_node --location localhost", bpk);
    CHECK(has(out, "MESSIDGE_NODE_PK=") && has(out, "MESSIDGE_NODE_SK=") && has(out, expect));
    char node_pk[64] = "";
    const char *np = strstr(out, "MESSIDGE_NODE_PK=");
    uint8_t npk[32];
    CHECK(np && sscanf(np + 17, "%44s", node_pk) == 1);
    CHECK(mdg_pk_from_b64(npk, node_pk) == 0 && mdg_identity_role(id, npk, NULL) == MDG_ROLE_NODE);
    CHECK(t_run(out, sizeof out, "%s --state %s --prefix %s/none add-node", A, state, base) == 0);
    CHECK(has(out, "localhost_broker.pub") && has(out, "MESSIDGE_BROKER_PK=BROKER_PK"));

    /* revoke with the admin tool: the broker refuses the key. */
    CHECK(t_run(out, sizeof out, "%s --state %s revoke %s", A, state, pk_b64) == 0);
    CHECK(t_run(out, sizeof out, "%s --state %s revoke %s", A, state, pk_b64) == 1);
    CHECK(has(out, "already revoked"));
    CHECK(t_run(out, sizeof out, "%s --state %s list", A, state) == 0);
    CHECK(has(out, "REVOKED"));
    CHECK(t_run(out, sizeof out, "%s call --prefix %s --port %d --timeout 5000 echo", M, p, bport) ==
          1);
    CHECK(has(out, "refused our key"));
}
#endif

int main(void)
{
    char state[256];

    /* The exchanges are on loopback: no proxy may get in the way. */
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("all_proxy");
    unsetenv("ALL_PROXY");
    t_capture_log();
    if (!mkdtemp(base)) {
        perror("mkdtemp");
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    path_in(state, sizeof state, "state");
    if (mdg_identity_open(&id, state) != 0 || mdg_keys_new(&bkeys) != 0) {
        fprintf(stderr, "set-up failed: %s\n", mdg_last_error());
        return 2;
    }
    mdg_pk_to_b64(mdg_keys_public(bkeys), bpk_b64);
    CHECK_RC(mdg_account_server_new(&srv, id, mdg_keys_public(bkeys), "127.0.0.1", 0), 0);
    acct_port = mdg_account_server_port(srv);
    CHECK(acct_port > 0);
    if (!srv)
        return t_done("test_account");

    /* A second server on the same port cannot start, and says why. */
    mdg_account_server *dup = NULL;
    CHECK_RC(mdg_account_server_new(&dup, id, mdg_keys_public(bkeys), "127.0.0.1", acct_port),
             MDG_ESYS);
    CHECK(last_error_has("cannot start the account server"));
    CHECK(dup == NULL);

    test_create_account();
    test_create_account_failures();
    test_bad_requests();
    test_concurrent_confirms();
    test_slow_clients();
    test_end_to_end();
#if defined(MDG_ADMIN_BIN) && defined(MDG_CLI_BIN)
    test_tools();
#else
    printf("note: messidge-admin / messidge not built: tools not tested\n");
#endif

    mdg_broker_destroy(&broker);
    mdg_account_server_destroy(&srv);
    mdg_account_server_destroy(&srv);
    mdg_identity_destroy(&id);
    mdg_keys_destroy(&bkeys);
    curl_global_cleanup();
    t_rm_tree(base);
    return t_done("test_account");
}
