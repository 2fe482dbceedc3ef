/*
 * The query API's conditional-GET cache (qa_versions.c): the latest version
 * of the accounts and transfers a thread has read, kept current by the
 * tally_versions channel, so a still-current If-None-Match is answered 304
 * without reading the database.
 */
#ifndef TALLY_QA_VERSIONS_H
#define TALLY_QA_VERSIONS_H

#include "tally/uuid.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct st_qa_versions_t qa_versions_t;
struct st_query_thread_t;

/** What a read must present when it stores its answer: nothing about its resource may have been missed since. */
typedef struct st_qa_versions_ticket_t {
    bool valid;
    uint64_t gen;
    uint32_t heard;
} qa_versions_ticket_t;

/** A cache of about `capacity` entries for `thr`, listening over its own connection to `dsn`; 0 turns it off. */
qa_versions_t *qa_versions_create(struct st_query_thread_t *thr, const char *dsn, size_t capacity);
void qa_versions_destroy(qa_versions_t *v);

/** Checks (again) that the triggers feeding the channel exist; until they do the cache answers nothing. */
void qa_versions_check(qa_versions_t *v);

/** Taken before reading resource `id` of `kind` ('a' account, 't' transfer). */
qa_versions_ticket_t qa_versions_ticket(qa_versions_t *v, char kind, const tly_uuid_t *id);

/** The version the cache knows as current for the tenant's resource, if this thread read its (small) body; false when it cannot
 * say. */
bool qa_versions_lookup(qa_versions_t *v, char kind, const tly_uuid_t *id, const tly_uuid_t *tenant, int64_t *version);

/** Counts a 304 answered from the cache (tally_not_modified_from_memory_total). */
void qa_versions_hit(qa_versions_t *v);

/**
 * Stores the version a read returned, unless the ticket says something was
 * missed meanwhile. `small`: its body is under the gzip threshold; only such
 * versions are answered from the cache (their 304 has no Vary and a strong tag).
 */
void qa_versions_note(qa_versions_t *v, qa_versions_ticket_t ticket, char kind, const tly_uuid_t *id, const tly_uuid_t *tenant,
                      int64_t version, bool small);

#endif
