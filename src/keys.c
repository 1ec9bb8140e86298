/* keys.c - Curve25519 key pairs and the key files on disk.
 *
 * The file layout is the one of the original Python Messidge, so that one
 * key directory serves both implementations:
 *
 *   PREFIX/NAME              secret key, standard base64 (44 chars), 0600
 *   PREFIX/NAME.pub          public key, same encoding
 *   PREFIX/NAME.spub         the broker's public key for location NAME
 *   PREFIX/default_location  the location to use when none is given
 *
 * Files are written without a trailing newline; when reading we tolerate
 * surrounding whitespace, since people edit these files by hand. Every
 * write goes to a temporary file in the same directory that is then
 * renamed over the target, so a crash never leaves half a key behind.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

/* A key file holds 44 chars; anything bigger than this is corrupt, and
 * we never read further than this into a file. */
#define MDG_FILE_MAX 4096

#define MDG_DEFAULT_LOCATION_FILE "default_location"

_Static_assert(MDG_KEY_BYTES == crypto_box_PUBLICKEYBYTES, "pk size");
_Static_assert(MDG_KEY_BYTES == crypto_box_SECRETKEYBYTES, "sk size");
_Static_assert(MDG_KEY_BYTES == crypto_scalarmult_BYTES, "scalarmult size");
_Static_assert(sodium_base64_ENCODED_LEN(MDG_KEY_BYTES, sodium_base64_VARIANT_ORIGINAL) ==
                   MDG_KEY_B64_LEN + 1,
               "base64 size");

struct mdg_keys {
    uint8_t pk[MDG_KEY_BYTES];
    uint8_t sk[MDG_KEY_BYTES];
};

/* ----------------------------------------------------------------- helpers */

/* sodium_init() is idempotent and thread-safe; it only fails when the
 * system gives no randomness. */
static int crypto_ready(void)
{
    if (sodium_init() < 0)
        return mdg_fail(MDG_ESYS, "libsodium initialisation failed");
    return 0;
}

/* Whether pk is the public key of sk. */
static bool keys_match(const uint8_t pk[MDG_KEY_BYTES], const uint8_t sk[MDG_KEY_BYTES])
{
    uint8_t derived[MDG_KEY_BYTES];
    bool ok = crypto_scalarmult_base(derived, sk) == 0 &&
              sodium_memcmp(derived, pk, MDG_KEY_BYTES) == 0;
    sodium_memzero(derived, sizeof derived);
    return ok;
}

/* Allocate a key pair holding copies of pk and sk (checked by the caller). */
static int keys_alloc(mdg_keys **out, const uint8_t pk[MDG_KEY_BYTES],
                      const uint8_t sk[MDG_KEY_BYTES])
{
    mdg_keys *k = malloc(sizeof *k);
    if (!k)
        return mdg_fail_plain(MDG_ENOMEM);
    memcpy(k->pk, pk, MDG_KEY_BYTES);
    memcpy(k->sk, sk, MDG_KEY_BYTES);
    *out = k;
    return 0;
}

/* Plain ASCII whitespace: isspace() depends on the locale. */
static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Narrow [*s, *s + *len) to drop whitespace at both ends. */
static void trim(const char **s, size_t *len)
{
    while (*len > 0 && is_space(**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && is_space((*s)[*len - 1]))
        (*len)--;
}

/* Decode key text: standard padded base64 of exactly MDG_KEY_BYTES bytes,
 * surrounding whitespace ignored. Returns 0 or -1; out is only written on
 * success, so a failed decode never leaves half a key. */
static int decode_key(uint8_t out[MDG_KEY_BYTES], const char *text, size_t len)
{
    uint8_t tmp[MDG_KEY_BYTES];
    size_t bin_len = 0;
    int rc = -1;

    trim(&text, &len);
    /* b64_end NULL makes libsodium reject anything after the key, and it
     * rejects non-zero padding bits, so only the canonical text passes. */
    if (len == MDG_KEY_B64_LEN &&
        sodium_base642bin(tmp, sizeof tmp, text, len, NULL, &bin_len, NULL,
                          sodium_base64_VARIANT_ORIGINAL) == 0 &&
        bin_len == MDG_KEY_BYTES) {
        memcpy(out, tmp, MDG_KEY_BYTES);
        rc = 0;
    }
    sodium_memzero(tmp, sizeof tmp);
    return rc;
}

/* A NAME or location becomes a file name inside the prefix: it must be a
 * single plain path component. Whitespace and control characters are
 * refused too: they would not survive the trimming done when reading. */
static int check_name(const char *name, const char *what)
{
    const char *p;

    if (!name || !*name)
        return mdg_fail(MDG_EINVAL, "%s is %s", what, name ? "empty" : "NULL");
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
        strcmp(name, MDG_DEFAULT_LOCATION_FILE) == 0)
        return mdg_fail(MDG_EINVAL, "%s \"%s\" is a reserved name", what, name);
    for (p = name; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '/' || c <= ' ' || c == 0x7f)
            return mdg_fail(MDG_EINVAL,
                            "invalid %s \"%.64s\": must be a plain file name "
                            "(no '/', spaces or control characters)",
                            what, name);
    }
    /* Leave room for the longest suffix, ".spub". */
    if (strlen(name) > NAME_MAX - 5)
        return mdg_fail(MDG_EINVAL, "%s \"%.64s...\" is too long", what, name);
    return 0;
}

/* out = dir/name suffix, in a PATH_MAX buffer. */
static int join_path(char out[PATH_MAX], const char *dir, const char *name,
                     const char *suffix)
{
    /* Avoid "//name" when the prefix is the root directory. */
    const char *sep = strcmp(dir, "/") == 0 ? "" : "/";
    int n = snprintf(out, PATH_MAX, "%s%s%s%s", dir, sep, name, suffix);
    if (n < 0 || n >= PATH_MAX)
        return mdg_fail(MDG_EINVAL, "path %s%s%s%s is too long", dir, sep, name, suffix);
    return 0;
}

/* Resolve the key directory into a PATH_MAX buffer: prefix, else
 * $MESSIDGE_PREFIX, else $HOME/.messidge; a leading "~/" means $HOME. */
static int resolve_prefix(char out[PATH_MAX], const char *prefix)
{
    const char *home = getenv("HOME");
    size_t len;
    int n;

    if (!prefix) {
        const char *env = getenv("MESSIDGE_PREFIX");
        prefix = env && *env ? env : "~/.messidge";
    }
    if (!*prefix)
        return mdg_fail(MDG_EINVAL, "key directory prefix is empty");

    if (prefix[0] == '~' && (prefix[1] == '\0' || prefix[1] == '/')) {
        if (!home || !*home)
            return mdg_fail(MDG_EINVAL,
                            "HOME is not set: cannot resolve key directory %s "
                            "(pass a prefix or set MESSIDGE_PREFIX)",
                            prefix);
        n = snprintf(out, PATH_MAX, "%s%s", home, prefix + 1);
    } else {
        n = snprintf(out, PATH_MAX, "%s", prefix);
    }
    if (n < 0 || n >= PATH_MAX)
        return mdg_fail(MDG_EINVAL, "key directory path is too long");

    /* "dir/" and "dir" are the same directory; keep paths in messages tidy. */
    len = (size_t)n;
    while (len > 1 && out[len - 1] == '/')
        out[--len] = '\0';
    return 0;
}

/* Read at most cap bytes of a small file into buf; *len gets the count.
 * Reading cap bytes means the file may be longer: callers pass one byte
 * more than they accept to tell "too big" apart. `what` names the file
 * in messages ("key file"). */
static int read_small_file(const char *path, const char *what, char *buf, size_t cap,
                           size_t *len)
{
    struct stat st;
    int fd, err;

    *len = 0;
    /* O_NONBLOCK: do not hang in open() if someone left a FIFO there. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        err = errno;
        return mdg_fail(err == ENOENT ? MDG_ENOENT : MDG_EIO, "cannot read %s %s: %s", what,
                        path, strerror(err));
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return mdg_fail(MDG_EIO, "cannot read %s %s: not a regular file", what, path);
    }
    while (*len < cap) {
        ssize_t n = read(fd, buf + *len, cap - *len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            err = errno;
            close(fd);
            return mdg_fail(MDG_EIO, "cannot read %s %s: %s", what, path, strerror(err));
        }
        if (n == 0)
            break;
        *len += (size_t)n;
    }
    close(fd);
    return 0;
}

/* Read a key file (any of NAME, NAME.pub, NAME.spub) into out. */
static int read_key_file(uint8_t out[MDG_KEY_BYTES], const char *path)
{
    char buf[MDG_FILE_MAX + 1];
    size_t len;
    int rc = read_small_file(path, "key file", buf, sizeof buf, &len);

    if (rc == 0 && (len > MDG_FILE_MAX || decode_key(out, buf, len) < 0))
        rc = mdg_fail(MDG_EBADKEY, "key file %s is not a base64 32-byte key", path);
    /* The buffer may have held a secret key. */
    sodium_memzero(buf, sizeof buf);
    return rc;
}

/* Create a private directory if missing (mode exactly 0700), or check
 * that it is one. Only the last component is made: a missing parent is
 * more likely a typo than a wish. what names it in errors. */
int mdg_ensure_dir(const char *dir, const char *what)
{
    struct stat st;
    int err;

    if (mkdir(dir, 0700) == 0) {
        /* mkdir() obeys the umask; make sure we end up with exactly 0700. */
        if (chmod(dir, 0700) < 0) {
            err = errno;
            return mdg_fail(MDG_EIO, "cannot set mode of %s %s: %s", what, dir, strerror(err));
        }
        return 0;
    }
    err = errno;
    if (err != EEXIST)
        return mdg_fail(MDG_EIO, "cannot create %s %s: %s%s", what, dir, strerror(err),
                        err == ENOENT ? " (its parent directory must exist)" : "");
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return mdg_fail(MDG_EIO, "%s %s exists but is not a directory", what, dir);
    return 0;
}

/* Write all of data to fd, retrying short writes. 0 or -1 with errno. */
static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Replace path (inside dir) with data, atomically: write a temp file in
 * the same directory, fsync it, rename it over path. mkostemp creates the
 * temp file 0600 with O_EXCL, so a secret is never readable by others,
 * not even for a moment; fchmod then sets the final mode. */
static int write_file_atomic(const char *dir, const char *path, const char *what,
                             const void *data, size_t len, mode_t mode)
{
    char tmp[PATH_MAX];
    int fd, err, rc, dfd;

    rc = join_path(tmp, dir, ".mdg-tmp-XXXXXX", "");
    if (rc)
        return rc;
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        err = errno;
        return mdg_fail(MDG_EIO, "cannot write %s %s: %s", what, path, strerror(err));
    }
    if (fchmod(fd, mode) < 0 || write_all(fd, data, len) < 0 || fsync(fd) < 0) {
        err = errno;
        close(fd);
        goto fail;
    }
    if (close(fd) < 0 || rename(tmp, path) < 0) {
        err = errno;
        goto fail;
    }
    /* Make the rename itself durable. Best effort: some filesystems
     * cannot fsync a directory, and the data is already safe. */
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return 0;

fail:
    unlink(tmp);
    return mdg_fail(MDG_EIO, "cannot write %s %s: %s", what, path, strerror(err));
}

/* Common start of every save: check the name, resolve the prefix into
 * dir and create it if needed. */
static int prepare_save(char dir[PATH_MAX], const char *name, const char *what,
                        const char *prefix)
{
    int rc = check_name(name, what);
    if (rc == 0)
        rc = resolve_prefix(dir, prefix);
    if (rc == 0)
        rc = mdg_ensure_dir(dir, "key directory");
    return rc;
}

/* Encode key and write it as PREFIX/name suffix. */
static int write_key_file(const char *dir, const char *name, const char *suffix,
                          const uint8_t key[MDG_KEY_BYTES], mode_t mode)
{
    char path[PATH_MAX];
    char text[MDG_KEY_B64_LEN + 1];
    int rc = join_path(path, dir, name, suffix);

    if (rc)
        return rc;
    mdg_pk_to_b64(key, text);
    rc = write_file_atomic(dir, path, "key file", text, MDG_KEY_B64_LEN, mode);
    sodium_memzero(text, sizeof text); /* may be the secret key */
    return rc;
}

/* ---------------------------------------------------------------- key pairs */

int mdg_keys_new(mdg_keys **out)
{
    mdg_keys *k;
    int rc;

    if (!out)
        return mdg_fail(MDG_EINVAL, "mdg_keys_new: out is NULL");
    *out = NULL;
    if ((rc = crypto_ready()) != 0)
        return rc;
    k = malloc(sizeof *k);
    if (!k)
        return mdg_fail_plain(MDG_ENOMEM);
    if (crypto_box_keypair(k->pk, k->sk) != 0) {
        sodium_memzero(k, sizeof *k);
        free(k);
        return mdg_fail(MDG_ESYS, "crypto_box_keypair failed");
    }
    *out = k;
    return 0;
}

int mdg_keys_from_raw(mdg_keys **out, const uint8_t pk[MDG_KEY_BYTES],
                      const uint8_t sk[MDG_KEY_BYTES])
{
    int rc;

    if (!out || !pk || !sk)
        return mdg_fail(MDG_EINVAL, "mdg_keys_from_raw: NULL argument");
    *out = NULL;
    if ((rc = crypto_ready()) != 0)
        return rc;
    /* A mismatched pair would fail later, in the CURVE handshake, with a
     * far less helpful error. */
    if (!keys_match(pk, sk))
        return mdg_fail(MDG_EBADKEY, "public key does not match secret key");
    return keys_alloc(out, pk, sk);
}

int mdg_keys_from_b64(mdg_keys **out, const char *pk_b64, const char *sk_b64)
{
    uint8_t pk[MDG_KEY_BYTES], sk[MDG_KEY_BYTES];
    int rc;

    if (!out || !pk_b64 || !sk_b64)
        return mdg_fail(MDG_EINVAL, "mdg_keys_from_b64: NULL argument");
    *out = NULL;
    if (decode_key(pk, pk_b64, strlen(pk_b64)) < 0)
        return mdg_fail(MDG_EBADKEY, "public key text is not a base64 32-byte key");
    if (decode_key(sk, sk_b64, strlen(sk_b64)) < 0)
        return mdg_fail(MDG_EBADKEY, "secret key text is not a base64 32-byte key");
    rc = mdg_keys_from_raw(out, pk, sk);
    sodium_memzero(sk, sizeof sk);
    return rc;
}

int mdg_keys_copy(mdg_keys **out, const mdg_keys *keys)
{
    if (!out || !keys)
        return mdg_fail(MDG_EINVAL, "mdg_keys_copy: NULL argument");
    *out = NULL;
    /* every mdg_keys was checked when it was made (or generated as a
     * pair): no scalar multiplication again, which a new connection
     * would pay (about 60 us) */
    return keys_alloc(out, keys->pk, keys->sk);
}

void mdg_keys_destroy(mdg_keys **keys)
{
    if (!keys || !*keys)
        return;
    sodium_memzero(*keys, sizeof **keys);
    free(*keys);
    *keys = NULL;
}

const uint8_t *mdg_keys_public(const mdg_keys *keys)
{
    return keys ? keys->pk : NULL;
}

const uint8_t *mdg_keys_secret(const mdg_keys *keys)
{
    return keys ? keys->sk : NULL;
}

/* ---------------------------------------------------------------- key files */

int mdg_keys_load(mdg_keys **out, const char *name, const char *prefix)
{
    char dir[PATH_MAX], sk_path[PATH_MAX], pk_path[PATH_MAX];
    uint8_t pk[MDG_KEY_BYTES], sk[MDG_KEY_BYTES];
    int rc;

    if (!out)
        return mdg_fail(MDG_EINVAL, "mdg_keys_load: out is NULL");
    *out = NULL;
    if ((rc = check_name(name, "key name")) != 0 || (rc = resolve_prefix(dir, prefix)) != 0 ||
        (rc = join_path(sk_path, dir, name, "")) != 0 ||
        (rc = join_path(pk_path, dir, name, ".pub")) != 0 || (rc = crypto_ready()) != 0)
        return rc;

    if ((rc = read_key_file(sk, sk_path)) != 0 || (rc = read_key_file(pk, pk_path)) != 0)
        goto done;
    if (!keys_match(pk, sk)) {
        rc = mdg_fail(MDG_EBADKEY, "public key file %s does not match secret key file %s",
                      pk_path, sk_path);
        goto done;
    }
    rc = keys_alloc(out, pk, sk);
done:
    sodium_memzero(sk, sizeof sk);
    return rc;
}

int mdg_keys_save(const mdg_keys *keys, const char *name, const char *prefix)
{
    char dir[PATH_MAX];
    int rc;

    if (!keys)
        return mdg_fail(MDG_EINVAL, "mdg_keys_save: keys is NULL");
    if ((rc = prepare_save(dir, name, "key name", prefix)) != 0)
        return rc;
    /* Secret first: if we die in between, load reports a mismatch rather
     * than silently pairing a new public key with an old secret. */
    if ((rc = write_key_file(dir, name, "", keys->sk, 0600)) != 0)
        return rc;
    return write_key_file(dir, name, ".pub", keys->pk, 0644);
}

int mdg_server_pk_load(uint8_t pk[MDG_KEY_BYTES], const char *location, const char *prefix)
{
    char dir[PATH_MAX], path[PATH_MAX];
    int rc;

    if (!pk)
        return mdg_fail(MDG_EINVAL, "mdg_server_pk_load: pk is NULL");
    if ((rc = check_name(location, "location")) != 0 || (rc = resolve_prefix(dir, prefix)) != 0 ||
        (rc = join_path(path, dir, location, ".spub")) != 0)
        return rc;
    return read_key_file(pk, path);
}

int mdg_server_pk_save(const uint8_t pk[MDG_KEY_BYTES], const char *location,
                       const char *prefix)
{
    char dir[PATH_MAX];
    int rc;

    if (!pk)
        return mdg_fail(MDG_EINVAL, "mdg_server_pk_save: pk is NULL");
    if ((rc = prepare_save(dir, location, "location", prefix)) != 0)
        return rc;
    return write_key_file(dir, location, ".spub", pk, 0644);
}

int mdg_default_location(char *buf, size_t len, const char *prefix)
{
    char dir[PATH_MAX], path[PATH_MAX];
    char text[MDG_FILE_MAX + 1];
    const char *s = text;
    size_t n;
    int rc;

    if (!buf || len == 0)
        return mdg_fail(MDG_EINVAL, "mdg_default_location: no buffer");
    buf[0] = '\0';
    if ((rc = resolve_prefix(dir, prefix)) != 0 ||
        (rc = join_path(path, dir, MDG_DEFAULT_LOCATION_FILE, "")) != 0 ||
        (rc = read_small_file(path, "location file", text, sizeof text, &n)) != 0)
        return rc;
    if (n > MDG_FILE_MAX)
        return mdg_fail(MDG_EIO, "location file %s is too big (corrupt?)", path);
    trim(&s, &n);
    if (n == 0)
        return mdg_fail(MDG_EIO, "location file %s is empty", path);
    if (memchr(s, '\0', n))
        return mdg_fail(MDG_EIO, "location file %s contains a NUL byte", path);
    if (n >= len)
        return mdg_fail(MDG_EINVAL, "buffer of %zu bytes too small for the location in %s",
                        len, path);
    memcpy(buf, s, n);
    buf[n] = '\0';
    return 0;
}

int mdg_default_location_save(const char *location, const char *prefix)
{
    char dir[PATH_MAX], path[PATH_MAX];
    int rc;

    if ((rc = prepare_save(dir, location, "location", prefix)) != 0 ||
        (rc = join_path(path, dir, MDG_DEFAULT_LOCATION_FILE, "")) != 0)
        return rc;
    return write_file_atomic(dir, path, "location file", location, strlen(location), 0644);
}

int mdg_prefix_path(char *buf, size_t len, const char *prefix)
{
    char dir[PATH_MAX];
    size_t n;
    int rc;

    if (!buf || len == 0)
        return mdg_fail(MDG_EINVAL, "mdg_prefix_path: no buffer");
    buf[0] = '\0';
    if ((rc = resolve_prefix(dir, prefix)) != 0)
        return rc;
    n = strlen(dir);
    if (n >= len)
        return mdg_fail(MDG_EINVAL, "buffer of %zu bytes too small for key directory %s", len,
                        dir);
    memcpy(buf, dir, n + 1);
    return 0;
}

/* ------------------------------------------------------------- key text */

int mdg_pk_from_b64(uint8_t pk[MDG_KEY_BYTES], const char *b64)
{
    if (!pk || !b64)
        return mdg_fail(MDG_EINVAL, "mdg_pk_from_b64: NULL argument");
    if (decode_key(pk, b64, strlen(b64)) < 0)
        return mdg_fail(MDG_EBADKEY, "key text \"%.60s\" is not a base64 32-byte key", b64);
    return 0;
}

void mdg_pk_to_b64(const uint8_t pk[MDG_KEY_BYTES], char out[MDG_KEY_B64_LEN + 1])
{
    if (!out)
        return;
    if (!pk) {
        out[0] = '\0';
        return;
    }
    sodium_bin2base64(out, MDG_KEY_B64_LEN + 1, pk, MDG_KEY_BYTES,
                      sodium_base64_VARIANT_ORIGINAL);
}
