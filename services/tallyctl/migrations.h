/*
 * The set of migration files on disk: `NNNN_name.sql`, ordered by version,
 * each with its SHA-256. No database here, so that unit tests cover naming,
 * ordering and checksums without PostgreSQL (migrate.c applies them).
 */
#ifndef TALLYCTL_MIGRATIONS_H
#define TALLYCTL_MIGRATIONS_H

#include <stdbool.h>
#include <stddef.h>

#define TLY_MIGRATION_NAME_MAX 128
#define TLY_SHA256_HEX_LEN 64

typedef struct st_tly_migration_t {
    int version;
    char name[TLY_MIGRATION_NAME_MAX];      /* "init" for 0001_init.sql */
    char file[TLY_MIGRATION_NAME_MAX + 16]; /* "0001_init.sql" */
    char checksum[TLY_SHA256_HEX_LEN + 1];  /* lower-case hex SHA-256 of the file */
    char *sql;                              /* the file's bytes plus a NUL; owned */
    size_t len;
} tly_migration_t;

typedef struct st_tly_migration_set_t {
    tly_migration_t *items; /* ascending version; owned */
    size_t n;
} tly_migration_set_t;

/**
 * Parses a migration file name: one to nine digits (conventionally four), a
 * version above zero, '_', a name of [A-Za-z0-9_-], ".sql". Returns false for
 * anything else.
 */
bool tly_migration_parse_name(const char *file, int *version, char *name, size_t namecap) __attribute__((warn_unused_result));

/**
 * Loads every migration in `dir`, sorted by version. Files not ending in
 * ".sql" and hidden files are ignored; a ".sql" file with a bad name, two files
 * with one version, an unreadable file or one holding a NUL byte are errors
 * (written to `err`, naming the file). Returns 0 or -1; free with
 * tly_migrations_free either way.
 */
int tly_migrations_load(const char *dir, tly_migration_set_t *out, char *err, size_t errcap) __attribute__((warn_unused_result));
void tly_migrations_free(tly_migration_set_t *set);

/** The migration with `version`, or NULL. Borrowed. */
const tly_migration_t *tly_migrations_find(const tly_migration_set_t *set, int version);

/** Lower-case hex SHA-256 of `buf`; `out` holds 65 bytes. */
void tly_sha256_hex(const void *buf, size_t len, char *out);

#endif
