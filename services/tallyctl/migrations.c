/* Migration files on disk: names, order, contents and checksums. */
#include "migrations.h"

#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Out of memory aborts, as everywhere in Tally. */
static void *
xrealloc(void *p, size_t n)
{
    if ((p = realloc(p, n)) == NULL)
        abort();
    return p;
}

bool
tly_migration_parse_name(const char *file, int *version, char *name, size_t namecap)
{
    size_t ndigits = strspn(file, "0123456789"), len = strlen(file);
    const char *rest = file + ndigits;
    if (ndigits == 0 || ndigits > 9 || rest[0] != '_' || len < ndigits + 1 + 1 + 4 || strcmp(file + len - 4, ".sql") != 0)
        return false;
    size_t nlen = len - ndigits - 1 - 4;
    if (strspn(rest + 1, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != nlen || nlen >= namecap)
        return false;
    int v = atoi(file); /* at most nine digits: fits */
    if (v <= 0)
        return false;
    *version = v;
    memcpy(name, rest + 1, nlen);
    name[nlen] = '\0';
    return true;
}

void
tly_sha256_hex(const void *buf, size_t len, char *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_Digest(buf, len, md, &n, EVP_sha256(), NULL) != 1 || n != 32)
        abort(); /* only on out-of-memory */
    for (unsigned int i = 0; i < n; ++i)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* Reads the whole file; rejects NUL bytes, which PostgreSQL would never see. */
static int
read_file(const char *path, char **buf, size_t *len, char *err, size_t errcap)
{
    const char *what = "could not open", *why = NULL;
    size_t cap = 8192, n = 0;
    char *b = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        goto cleanup;
    what = "could not read";
    b = xrealloc(NULL, cap);
    for (size_t got; (got = fread(b + n, 1, cap - n - 1, f)) > 0;) {
        n += got;
        if (cap - n - 1 == 0)
            b = xrealloc(b, cap *= 2);
    }
    if (ferror(f))
        goto cleanup;
    b[n] = '\0';
    if (memchr(b, '\0', n) != NULL) {
        why = "it holds a NUL byte";
        goto cleanup;
    }
    *buf = b, *len = n, b = NULL, what = NULL;
cleanup:
    if (what != NULL)
        snprintf(err, errcap, "%s migration file \"%s\": %s", what, path, why != NULL ? why : strerror(errno));
    if (f != NULL)
        fclose(f);
    free(b);
    return what == NULL ? 0 : -1;
}

static int
cmp_version(const void *a, const void *b)
{
    const tly_migration_t *x = a, *y = b;
    return (x->version > y->version) - (x->version < y->version);
}

/* Adds `file` to the set when it is a migration; -1 on a bad .sql name. */
static int
add_file(const char *dir, const char *file, tly_migration_set_t *set, char *err, size_t errcap)
{
    size_t len = strlen(file);
    if (file[0] == '.' || len < 4 || strcmp(file + len - 4, ".sql") != 0)
        return 0;
    tly_migration_t m = {0};
    if (!tly_migration_parse_name(file, &m.version, m.name, sizeof(m.name))) {
        snprintf(err, errcap, "migration file name \"%s/%s\" is not NNNN_name.sql", dir, file);
        return -1;
    }
    snprintf(m.file, sizeof(m.file), "%s", file);
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    if (read_file(path, &m.sql, &m.len, err, errcap) != 0)
        return -1;
    tly_sha256_hex(m.sql, m.len, m.checksum);
    set->items = xrealloc(set->items, (set->n + 1) * sizeof(*set->items));
    set->items[set->n++] = m;
    return 0;
}

static int
check_unique(const char *dir, const tly_migration_set_t *set, char *err, size_t errcap)
{
    for (size_t i = 1; i < set->n; ++i) {
        if (set->items[i].version == set->items[i - 1].version) {
            snprintf(err, errcap, "migration files \"%s/%s\" and \"%s/%s\" have the same version %d", dir, set->items[i - 1].file,
                     dir, set->items[i].file, set->items[i].version);
            return -1;
        }
    }
    return 0;
}

int
tly_migrations_load(const char *dir, tly_migration_set_t *out, char *err, size_t errcap)
{
    int ret = -1;
    struct dirent *de;
    DIR *d = opendir(dir);
    memset(out, 0, sizeof(*out));
    if (d == NULL) {
        snprintf(err, errcap, "could not open migrations directory \"%s\": %s", dir, strerror(errno));
        goto cleanup;
    }
    while ((de = readdir(d)) != NULL)
        if (add_file(dir, de->d_name, out, err, errcap) != 0)
            goto cleanup;
    if (out->n > 0)
        qsort(out->items, out->n, sizeof(*out->items), cmp_version);
    if (check_unique(dir, out, err, errcap) != 0)
        goto cleanup;
    ret = 0;
cleanup:
    if (d != NULL)
        closedir(d);
    return ret;
}

void
tly_migrations_free(tly_migration_set_t *set)
{
    for (size_t i = 0; i < set->n; ++i)
        free(set->items[i].sql);
    free(set->items);
    set->items = NULL;
    set->n = 0;
}

const tly_migration_t *
tly_migrations_find(const tly_migration_set_t *set, int version)
{
    for (size_t i = 0; i < set->n; ++i)
        if (set->items[i].version == version)
            return &set->items[i];
    return NULL;
}
