/* test_keys.c - key pairs, key files and key text (src/keys.c).
 *
 * Works in a fresh directory under /tmp and removes it at the end. Exits
 * non-zero at the first failed check, printing where and what. */
#include "messidge.h"
#include "testsys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

#include <sodium.h>
#include <zmq.h>

static int checks;
static char tmpdir[] = "/tmp/test_keys.XXXXXX";
static bool tmpdir_made;

#define CHECK(expr)                                                                    \
    do {                                                                               \
        if (!(expr)) {                                                                 \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__,    \
                    __LINE__, #expr, mdg_last_error());                                \
            exit(1);                                                                   \
        }                                                                              \
        checks++;                                                                      \
    } while (0)

/* ------------------------------------------------------------ file helpers */

/* Runs at exit, so a failed CHECK does not leave the directory behind. */
static void cleanup(void)
{
    if (tmpdir_made)
        t_rm_tree(tmpdir);
}

static char *path_in(char *buf, size_t len, const char *dir, const char *name)
{
    snprintf(buf, len, "%s/%s", dir, name);
    return buf;
}

static void write_text(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(text, 1, len, f) == len);
    CHECK(fclose(f) == 0);
}

/* Whole file into buf (NUL-terminated); returns the length. */
static size_t read_text(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "rb");
    size_t n;
    CHECK(f != NULL);
    n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fclose(f);
    return n;
}

static unsigned file_mode(const char *path)
{
    struct stat st;
    CHECK(stat(path, &st) == 0);
    return (unsigned)(st.st_mode & 07777);
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static bool error_has(const char *text)
{
    return strstr(mdg_last_error(), text) != NULL;
}

/* Number of entries in dir whose name starts with a dot (temp files). */
static int hidden_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    CHECK(d != NULL);
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] == '.' && strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static bool same_keys(const mdg_keys *a, const mdg_keys *b)
{
    return memcmp(mdg_keys_public(a), mdg_keys_public(b), MDG_KEY_BYTES) == 0 &&
           memcmp(mdg_keys_secret(a), mdg_keys_secret(b), MDG_KEY_BYTES) == 0;
}

/* ------------------------------------------------------------------- tests */

static void test_new_and_text(void)
{
    mdg_keys *k = NULL, *k2 = NULL;
    uint8_t derived[MDG_KEY_BYTES], pk[MDG_KEY_BYTES];
    char pk_b64[MDG_KEY_B64_LEN + 1], sk_b64[MDG_KEY_B64_LEN + 1];
    char padded[MDG_KEY_B64_LEN + 8];

    CHECK(mdg_keys_new(&k) == 0 && k != NULL);
    CHECK(crypto_scalarmult_base(derived, mdg_keys_secret(k)) == 0);
    CHECK(memcmp(derived, mdg_keys_public(k), MDG_KEY_BYTES) == 0);
    CHECK(mdg_keys_new(NULL) == MDG_EINVAL);

    /* Text roundtrip: 44 chars, decodes back to the same key. */
    mdg_pk_to_b64(mdg_keys_public(k), pk_b64);
    mdg_pk_to_b64(mdg_keys_secret(k), sk_b64);
    CHECK(strlen(pk_b64) == MDG_KEY_B64_LEN && pk_b64[43] == '=');
    CHECK(mdg_pk_from_b64(pk, pk_b64) == 0);
    CHECK(memcmp(pk, mdg_keys_public(k), MDG_KEY_BYTES) == 0);
    snprintf(padded, sizeof padded, " %s\n", pk_b64);
    CHECK(mdg_pk_from_b64(pk, padded) == 0);
    CHECK(mdg_pk_from_b64(pk, "not a key") == MDG_EBADKEY);
    CHECK(mdg_pk_from_b64(pk, "AAAAAAAAAAAAAAAAAAAAAA==") == MDG_EBADKEY); /* 16 bytes */
    CHECK(mdg_pk_from_b64(pk, "") == MDG_EBADKEY);
    CHECK(mdg_pk_from_b64(pk, NULL) == MDG_EINVAL);

    /* From base64: roundtrip, garbage and a mismatched pair. */
    CHECK(mdg_keys_from_b64(&k2, pk_b64, sk_b64) == 0 && k2 != NULL);
    CHECK(same_keys(k, k2));
    mdg_keys_destroy(&k2);
    CHECK(k2 == NULL);
    CHECK(mdg_keys_from_b64(&k2, "garbage", sk_b64) == MDG_EBADKEY && k2 == NULL);
    CHECK(mdg_keys_from_b64(&k2, pk_b64, "garbage!") == MDG_EBADKEY && k2 == NULL);
    CHECK(mdg_keys_from_b64(&k2, sk_b64, pk_b64) == MDG_EBADKEY && k2 == NULL);
    CHECK(error_has("does not match"));
    CHECK(mdg_keys_from_b64(&k2, NULL, sk_b64) == MDG_EINVAL);

    /* From raw: mismatch refused. */
    CHECK(mdg_keys_from_raw(&k2, mdg_keys_public(k), mdg_keys_secret(k)) == 0);
    CHECK(same_keys(k, k2));
    mdg_keys_destroy(&k2);
    CHECK(mdg_keys_from_raw(&k2, mdg_keys_secret(k), mdg_keys_secret(k)) == MDG_EBADKEY);
    CHECK(k2 == NULL);

    mdg_keys_destroy(&k);
    mdg_keys_destroy(&k); /* pointer to NULL: no-op */
    mdg_keys_destroy(NULL);
    CHECK(mdg_keys_public(NULL) == NULL && mdg_keys_secret(NULL) == NULL);
}

static void test_files(void)
{
    char prefix[256], p[512], p2[512], buf[128];
    mdg_keys *k = NULL, *k2 = NULL, *other = NULL;
    char pk_b64[MDG_KEY_B64_LEN + 1], sk_b64[MDG_KEY_B64_LEN + 1];

    /* The prefix does not exist yet: save creates it, 0700. */
    path_in(prefix, sizeof prefix, tmpdir, "keys");
    CHECK(mdg_keys_new(&k) == 0);
    CHECK(mdg_keys_save(k, "localhost", prefix) == 0);
    CHECK(file_mode(prefix) == 0700);
    CHECK(file_mode(path_in(p, sizeof p, prefix, "localhost")) == 0600);
    CHECK(file_mode(path_in(p, sizeof p, prefix, "localhost.pub")) == 0644);
    CHECK(hidden_entries(prefix) == 0); /* no temp file left behind */

    /* Exactly the 44 chars of base64, no newline. */
    mdg_pk_to_b64(mdg_keys_public(k), pk_b64);
    mdg_pk_to_b64(mdg_keys_secret(k), sk_b64);
    CHECK(read_text(path_in(p, sizeof p, prefix, "localhost"), buf, sizeof buf) == 44);
    CHECK(strcmp(buf, sk_b64) == 0);
    CHECK(read_text(path_in(p, sizeof p, prefix, "localhost.pub"), buf, sizeof buf) == 44);
    CHECK(strcmp(buf, pk_b64) == 0);

    /* Roundtrip. */
    CHECK(mdg_keys_load(&k2, "localhost", prefix) == 0 && k2 != NULL);
    CHECK(same_keys(k, k2));
    mdg_keys_destroy(&k2);

    /* A trailing newline (files edited by hand, or by echo) is fine. */
    snprintf(buf, sizeof buf, "%s\n", sk_b64);
    write_text(path_in(p, sizeof p, prefix, "edited"), buf, strlen(buf));
    snprintf(buf, sizeof buf, "%s\r\n", pk_b64);
    write_text(path_in(p, sizeof p, prefix, "edited.pub"), buf, strlen(buf));
    CHECK(mdg_keys_load(&k2, "edited", prefix) == 0);
    CHECK(same_keys(k, k2));
    mdg_keys_destroy(&k2);

    /* Saving over a loose existing secret file leaves it 0600. */
    CHECK(chmod(path_in(p, sizeof p, prefix, "edited"), 0644) == 0);
    CHECK(mdg_keys_save(k, "edited", prefix) == 0);
    CHECK(file_mode(p) == 0600);
    CHECK(read_text(p, buf, sizeof buf) == 44);

    /* Missing files: ENOENT naming the path. */
    CHECK(mdg_keys_load(&k2, "nosuch", prefix) == MDG_ENOENT && k2 == NULL);
    CHECK(error_has(path_in(p, sizeof p, prefix, "nosuch")));
    CHECK(error_has("No such file"));
    write_text(path_in(p, sizeof p, prefix, "halfpair"), sk_b64, 44);
    CHECK(mdg_keys_load(&k2, "halfpair", prefix) == MDG_ENOENT);
    CHECK(error_has(path_in(p, sizeof p, prefix, "halfpair.pub")));

    /* Corrupt content: EBADKEY naming the file. */
    write_text(path_in(p, sizeof p, prefix, "bad"), "this is not base64 at all!!", 27);
    write_text(path_in(p2, sizeof p2, prefix, "bad.pub"), pk_b64, 44);
    CHECK(mdg_keys_load(&k2, "bad", prefix) == MDG_EBADKEY && k2 == NULL);
    CHECK(error_has(p) && error_has("not a base64 32-byte key"));
    write_text(p, "AAAAAAAAAAAAAAAAAAAAAA==", 24); /* valid base64, 16 bytes */
    CHECK(mdg_keys_load(&k2, "bad", prefix) == MDG_EBADKEY);
    CHECK(error_has(p));
    write_text(p, sk_b64, 44);
    write_text(p2, "", 0); /* empty public file */
    CHECK(mdg_keys_load(&k2, "bad", prefix) == MDG_EBADKEY);
    CHECK(error_has(p2));
    {
        /* Oversized: a valid key followed by 8 KiB of blanks. */
        static char big[MDG_KEY_B64_LEN + 8192];
        memset(big, ' ', sizeof big);
        memcpy(big, pk_b64, MDG_KEY_B64_LEN);
        write_text(p2, big, sizeof big);
        CHECK(mdg_keys_load(&k2, "bad", prefix) == MDG_EBADKEY);
        CHECK(error_has(p2));
    }

    /* Mismatched pair: EBADKEY naming both files. */
    CHECK(mdg_keys_new(&other) == 0);
    CHECK(mdg_keys_save(other, "mix", prefix) == 0);
    write_text(path_in(p2, sizeof p2, prefix, "mix.pub"), pk_b64, 44);
    CHECK(mdg_keys_load(&k2, "mix", prefix) == MDG_EBADKEY && k2 == NULL);
    snprintf(p, sizeof p, "secret key file %s/mix", prefix);
    CHECK(error_has(p2) && error_has(p));
    mdg_keys_destroy(&other);

    /* Bad names. */
    CHECK(mdg_keys_load(&k2, "", prefix) == MDG_EINVAL);
    CHECK(mdg_keys_load(&k2, NULL, prefix) == MDG_EINVAL);
    CHECK(mdg_keys_load(&k2, "a/b", prefix) == MDG_EINVAL);
    CHECK(mdg_keys_load(&k2, "..", prefix) == MDG_EINVAL);
    CHECK(mdg_keys_load(&k2, ".", prefix) == MDG_EINVAL);
    CHECK(mdg_keys_save(k, "../escape", prefix) == MDG_EINVAL);
    CHECK(mdg_keys_save(k, "new\nline", prefix) == MDG_EINVAL);
    CHECK(mdg_keys_save(NULL, "x", prefix) == MDG_EINVAL);
    CHECK(mdg_keys_load(NULL, "localhost", prefix) == MDG_EINVAL);

    /* Only the last component of the prefix is created. */
    path_in(p, sizeof p, tmpdir, "no/such/dir");
    CHECK(mdg_keys_save(k, "x", p) == MDG_EIO);
    CHECK(error_has(p));

    mdg_keys_destroy(&k);
}

static void test_spub_and_location(void)
{
    char prefix[256], p[512], buf[128];
    uint8_t pk[MDG_KEY_BYTES], got[MDG_KEY_BYTES];
    char small[4];

    path_in(prefix, sizeof prefix, tmpdir, "loc");

    /* Broker public key for a location. */
    randombytes_buf(pk, sizeof pk);
    CHECK(mdg_server_pk_save(pk, "broker.example.org", prefix) == 0);
    CHECK(file_mode(prefix) == 0700);
    CHECK(read_text(path_in(p, sizeof p, prefix, "broker.example.org.spub"), buf,
                    sizeof buf) == 44);
    CHECK(mdg_server_pk_load(got, "broker.example.org", prefix) == 0);
    CHECK(memcmp(pk, got, sizeof pk) == 0);
    CHECK(mdg_server_pk_load(got, "elsewhere", prefix) == MDG_ENOENT);
    CHECK(error_has(path_in(p, sizeof p, prefix, "elsewhere.spub")));
    write_text(p, "garbage", 7);
    CHECK(mdg_server_pk_load(got, "elsewhere", prefix) == MDG_EBADKEY);
    CHECK(error_has(p));

    /* Default location. */
    CHECK(mdg_default_location(buf, sizeof buf, prefix) == MDG_ENOENT);
    CHECK(error_has("default_location"));
    CHECK(mdg_default_location_save("broker.example.org", prefix) == 0);
    CHECK(read_text(path_in(p, sizeof p, prefix, "default_location"), buf, sizeof buf) ==
          strlen("broker.example.org"));
    CHECK(mdg_default_location(buf, sizeof buf, prefix) == 0);
    CHECK(strcmp(buf, "broker.example.org") == 0);
    write_text(p, "localhost\n\n", 11);
    CHECK(mdg_default_location(buf, sizeof buf, prefix) == 0);
    CHECK(strcmp(buf, "localhost") == 0);
    CHECK(mdg_default_location(small, sizeof small, prefix) == MDG_EINVAL);
    write_text(p, " \n", 2);
    CHECK(mdg_default_location(buf, sizeof buf, prefix) == MDG_EIO);
    CHECK(error_has("is empty"));
    CHECK(mdg_default_location_save("", prefix) == MDG_EINVAL);
    CHECK(mdg_default_location_save("a/b", prefix) == MDG_EINVAL);
    CHECK(mdg_default_location_save(NULL, prefix) == MDG_EINVAL);
}

static void test_prefix(void)
{
    char *old_prefix = getenv("MESSIDGE_PREFIX") ? strdup(getenv("MESSIDGE_PREFIX")) : NULL;
    char *old_home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
    char dir[256], p[512], buf[512];
    mdg_keys *k = NULL, *k2 = NULL;

    /* MESSIDGE_PREFIX is used when prefix is NULL. */
    path_in(dir, sizeof dir, tmpdir, "env");
    CHECK(setenv("MESSIDGE_PREFIX", dir, 1) == 0);
    CHECK(mdg_prefix_path(buf, sizeof buf, NULL) == 0 && strcmp(buf, dir) == 0);
    CHECK(mdg_keys_new(&k) == 0);
    CHECK(mdg_keys_save(k, "envkey", NULL) == 0);
    CHECK(exists(path_in(p, sizeof p, dir, "envkey.pub")));
    CHECK(mdg_keys_load(&k2, "envkey", NULL) == 0 && same_keys(k, k2));
    mdg_keys_destroy(&k2);
    /* An explicit prefix wins over the environment. */
    CHECK(mdg_prefix_path(buf, sizeof buf, "/some/where/") == 0);
    CHECK(strcmp(buf, "/some/where") == 0);

    /* Empty MESSIDGE_PREFIX: $HOME/.messidge, and "~/" expands to $HOME. */
    CHECK(setenv("MESSIDGE_PREFIX", "", 1) == 0);
    CHECK(setenv("HOME", tmpdir, 1) == 0);
    CHECK(mdg_prefix_path(buf, sizeof buf, NULL) == 0);
    CHECK(strcmp(buf, path_in(p, sizeof p, tmpdir, ".messidge")) == 0);
    CHECK(mdg_keys_save(k, "homekey", NULL) == 0);
    CHECK(file_mode(p) == 0700);
    CHECK(mdg_prefix_path(buf, sizeof buf, "~/x") == 0);
    CHECK(strcmp(buf, path_in(p, sizeof p, tmpdir, "x")) == 0);
    CHECK(mdg_prefix_path(buf, 4, NULL) == MDG_EINVAL);

    /* No HOME and no MESSIDGE_PREFIX: a clear error. */
    CHECK(unsetenv("HOME") == 0);
    CHECK(unsetenv("MESSIDGE_PREFIX") == 0);
    CHECK(mdg_prefix_path(buf, sizeof buf, NULL) == MDG_EINVAL);
    CHECK(error_has("HOME"));
    CHECK(mdg_keys_load(&k2, "homekey", NULL) == MDG_EINVAL && k2 == NULL);

    if (old_home)
        setenv("HOME", old_home, 1);
    if (old_prefix)
        setenv("MESSIDGE_PREFIX", old_prefix, 1);
    free(old_home);
    free(old_prefix);
    mdg_keys_destroy(&k);
}

/* Keys made by libzmq (Z85 text) are the same raw Curve25519 keys. */
static void test_zmq_interop(void)
{
    char z_pk[41], z_sk[41], z_derived[41];
    uint8_t pk[MDG_KEY_BYTES], sk[MDG_KEY_BYTES];
    mdg_keys *k = NULL;

    CHECK(zmq_curve_keypair(z_pk, z_sk) == 0);
    CHECK(zmq_z85_decode(pk, z_pk) != NULL);
    CHECK(zmq_z85_decode(sk, z_sk) != NULL);
    CHECK(mdg_keys_from_raw(&k, pk, sk) == 0);
    CHECK(memcmp(mdg_keys_public(k), pk, MDG_KEY_BYTES) == 0);
    mdg_keys_destroy(&k);

    /* And the other way: libzmq derives our public key from our secret. */
    CHECK(mdg_keys_new(&k) == 0);
    CHECK(zmq_z85_encode(z_sk, mdg_keys_secret(k), MDG_KEY_BYTES) != NULL);
    CHECK(zmq_curve_public(z_derived, z_sk) == 0);
    CHECK(zmq_z85_decode(pk, z_derived) != NULL);
    CHECK(memcmp(mdg_keys_public(k), pk, MDG_KEY_BYTES) == 0);
    mdg_keys_destroy(&k);
    sodium_memzero(sk, sizeof sk);
}

int main(void)
{
    CHECK(sodium_init() >= 0);
    CHECK(mkdtemp(tmpdir) != NULL);
    tmpdir_made = true;
    atexit(cleanup);

    test_new_and_text();
    test_files();
    test_spub_and_location();
    test_prefix();
    test_zmq_interop();

    printf("test_keys: %d checks passed\n", checks);
    return 0;
}
