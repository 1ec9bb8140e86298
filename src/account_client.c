/* account_client.c - create an account from an invitation (libcurl).
 *
 * The user's half of the invitation flow: make a key pair, POST
 * "TOKEN PUBLIC_KEY" to the broker's account server, and keep the key pair
 * and the broker key it answers. Compatible both ways with the original
 * Messidge (same request, same answer, same key files).
 *
 * Unlike the original, nothing is written until the server has said yes,
 * and an existing key pair for the location is not replaced unless asked:
 * overwriting it would lose the old account's secret key for good.
 */
#include "internal.h"
#include "messidge_identity.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <sodium.h>

#define CONNECT_TIMEOUT_MS 5000L
#define TOTAL_TIMEOUT_MS 15000L
#define MAX_ANSWER 4096
#define MAX_TOKEN 256

/* ----------------------------------------------------------------- helpers */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* The answer, as it arrives; more than MAX_ANSWER bytes aborts. */
typedef struct answer {
    char text[MAX_ANSWER + 1];
    size_t len;
    bool too_long;
} answer;

static size_t on_data(char *data, size_t size, size_t nmemb, void *arg)
{
    answer *a = arg;
    size_t n = size * nmemb;
    if (a->len + n > MAX_ANSWER) {
        a->too_long = true;
        return 0; /* makes curl stop with CURLE_WRITE_ERROR */
    }
    memcpy(a->text + a->len, data, n);
    a->len += n;
    a->text[a->len] = '\0';
    return n;
}

/* Printable text for messages: the server's answer is not trusted. */
static void sanitize(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < ' ' || (unsigned char)*s == 0x7f)
            *s = '?';
}

/* A location names key files and goes into a URL: a plain host name or
 * address, no '/', spaces or control characters. */
static int check_location(const char *location)
{
    if (!location || !*location)
        return mdg_fail(MDG_EINVAL, "location is empty");
    if (strlen(location) > 253 + 2)
        return mdg_fail(MDG_EINVAL, "location \"%.64s...\" is too long", location);
    if (strcmp(location, ".") == 0 || strcmp(location, "..") == 0 ||
        strcmp(location, "default_location") == 0)
        return mdg_fail(MDG_EINVAL, "location \"%s\" is a reserved name", location);
    for (const char *p = location; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c == 0x7f || c == '/' || c == '@' || c == '?' || c == '#' ||
            c == '[' || c == ']')
            return mdg_fail(MDG_EINVAL,
                            "location \"%.64s\" is not a host name or address", location);
    }
    return 0;
}

static int check_token(const char *token)
{
    size_t n = token ? strlen(token) : 0;
    if (n == 0)
        return mdg_fail(MDG_EINVAL, "token is empty");
    if (n > MAX_TOKEN)
        return mdg_fail(MDG_EINVAL, "token is longer than %d characters", MAX_TOKEN);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)token[i] <= ' ' || (unsigned char)token[i] == 0x7f)
            return mdg_fail(MDG_EINVAL, "token contains a space or control character");
    return 0;
}

/* Before asking the server (which spends the token): will we be able to
 * save the result? dir is the resolved prefix. */
static int check_prefix(const char *dir, const char *location, unsigned flags)
{
    char path[PATH_MAX], parent[PATH_MAX];
    struct stat st;
    char *slash;

    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return mdg_fail(MDG_EINVAL, "key directory %s is not a directory", dir);
        if (access(dir, W_OK | X_OK) != 0)
            return mdg_fail(MDG_EINVAL, "key directory %s is not writable: %s", dir,
                            strerror(errno));
        if (snprintf(path, sizeof path, "%s/%s", dir, location) >= (int)sizeof path)
            return mdg_fail(MDG_EINVAL, "key path for %s is too long", location);
        if (lstat(path, &st) == 0 && !(flags & MDG_ACCOUNT_OVERWRITE))
            return mdg_fail(MDG_ESTATE,
                            "key file %s exists: there is already an account for %s (move "
                            "it away, or overwrite it on purpose)",
                            path, location);
        return 0;
    }
    /* The directory will be made: its parent must be there and writable. */
    snprintf(parent, sizeof parent, "%s", dir);
    slash = strrchr(parent, '/');
    if (!slash)
        snprintf(parent, sizeof parent, ".");
    else if (slash == parent)
        parent[1] = '\0';
    else
        *slash = '\0';
    if (stat(parent, &st) != 0 || !S_ISDIR(st.st_mode))
        return mdg_fail(MDG_EINVAL, "cannot create key directory %s: %s does not exist", dir,
                        parent);
    if (access(parent, W_OK | X_OK) != 0)
        return mdg_fail(MDG_EINVAL, "cannot create key directory %s: %s is not writable", dir,
                        parent);
    return 0;
}

/* POST body to url; fills a and *status. */
static int post(const char *url, const char *body, answer *a, long *status)
{
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    CURL *curl;
    CURLcode cc;
    int rc = 0;

    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return mdg_fail(MDG_ESYS, "libcurl initialisation failed: %s",
                        curl_easy_strerror(curl_init_rc));
    curl = curl_easy_init();
    if (!curl)
        return mdg_fail(MDG_ESYS, "libcurl: cannot make a handle");
    headers = curl_slist_append(headers, "Content-Type: text/plain");
    headers = curl_slist_append(headers, "Expect:"); /* small body: no 100-continue */

    curl_easy_setopt(curl, CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500 /* 7.85 */
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http");
#else
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS, (long)CURLPROTO_HTTP);
#endif
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "libmessidge");
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, TOTAL_TIMEOUT_MS);
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, a);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);

    cc = curl_easy_perform(curl);
    if (cc == CURLE_OK) {
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, status);
    } else if (a->too_long) {
        rc = mdg_fail(MDG_EPROTO, "the account server at %s answered more than %d bytes", url,
                      MAX_ANSWER);
    } else {
        rc = mdg_fail(cc == CURLE_OPERATION_TIMEDOUT ? MDG_ETIMEDOUT : MDG_EIO,
                      "cannot reach the account server at %s: %s", url,
                      errbuf[0] ? errbuf : curl_easy_strerror(cc));
    }
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    return rc;
}

/* What the server said: 0 with the broker key, or why not. */
static int read_answer(const char *url, answer *a, long status, uint8_t broker_pk[MDG_KEY_BYTES])
{
    char *t = a->text;
    size_t n = a->len;

    a->text[n] = '\0';
    while (n > 0 && (t[n - 1] == '\n' || t[n - 1] == '\r' || t[n - 1] == ' '))
        t[--n] = '\0';
    sanitize(t);
    if (strncmp(t, "Fail:", 5) == 0)
        return mdg_fail(MDG_EREMOTE, "the account server refused (HTTP %ld): %.300s", status, t);
    if (status < 200 || status > 299)
        return mdg_fail(MDG_EPROTO, "the account server at %s answered HTTP %ld: %.200s", url,
                        status, t);
    if (n == 0)
        return mdg_fail(MDG_EPROTO,
                        "the account server at %s gave an empty answer (an original "
                        "Messidge broker does so for a malformed request)",
                        url);
    if (mdg_pk_from_b64(broker_pk, t) != 0)
        return mdg_fail(MDG_EPROTO,
                        "the account server's answer is not a broker key: \"%.60s\"", t);
    return 0;
}

/* Remove what a failed save left behind (best effort). */
static void unlink_saved(const char *dir, const char *location)
{
    static const char *const suffixes[] = {"", ".pub", ".spub"};
    char path[PATH_MAX];
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++)
        if (snprintf(path, sizeof path, "%s/%s%s", dir, location, suffixes[i]) <
            (int)sizeof path)
            unlink(path);
}

/* ------------------------------------------------------------------ public */

int mdg_create_account(const char *location, int port, const char *token, const char *prefix,
                       unsigned flags)
{
    char dir[PATH_MAX], url[512], pk_b64[MDG_KEY_B64_LEN + 1];
    char body[MAX_TOKEN + 1 + MDG_KEY_B64_LEN + 1];
    uint8_t broker_pk[MDG_KEY_BYTES];
    mdg_keys *keys = NULL;
    answer *a = NULL;
    long status = 0;
    int rc;

    if (port <= 0)
        port = MDG_DEFAULT_ACCOUNT_PORT;
    if (port > 65535)
        return mdg_fail(MDG_EINVAL, "port %d is out of range", port);
    if ((rc = check_location(location)) != 0 || (rc = check_token(token)) != 0 ||
        (rc = mdg_prefix_path(dir, sizeof dir, prefix)) != 0 ||
        (rc = check_prefix(dir, location, flags)) != 0)
        return rc;
    /* An IPv6 address goes in brackets. */
    snprintf(url, sizeof url, strchr(location, ':') ? "http://[%s]:%d/" : "http://%s:%d/",
             location, port);

    if ((rc = mdg_keys_new(&keys)) != 0)
        return rc;
    mdg_pk_to_b64(mdg_keys_public(keys), pk_b64);
    snprintf(body, sizeof body, "%s %s", token, pk_b64);

    a = calloc(1, sizeof *a);
    if (!a) {
        rc = mdg_fail_plain(MDG_ENOMEM);
        goto done;
    }
    if ((rc = post(url, body, a, &status)) != 0 ||
        (rc = read_answer(url, a, status, broker_pk)) != 0)
        goto done;

    /* The server has made the account: keep the keys. */
    if ((rc = mdg_keys_save(keys, location, prefix)) != 0 ||
        (rc = mdg_server_pk_save(broker_pk, location, prefix)) != 0 ||
        (rc = mdg_default_location_save(location, prefix)) != 0) {
        char why[256];
        snprintf(why, sizeof why, "%s", mdg_last_error());
        /* Without the overwrite flag, nothing was there before: all ours. */
        if (!(flags & MDG_ACCOUNT_OVERWRITE))
            unlink_saved(dir, location);
        rc = mdg_fail(rc,
                      "the account was created but its keys could not be saved (%s); the "
                      "token is spent: ask for a new invitation",
                      why);
        goto done;
    }
    mdg_log(MDG_LOG_INFO, "account created at %s; keys saved in %s", location, dir);
done:
    sodium_memzero(body, sizeof body);
    free(a);
    mdg_keys_destroy(&keys);
    return rc;
}
