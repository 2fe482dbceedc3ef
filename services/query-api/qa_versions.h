/*
 * The query API's read cache (qa_versions.c): the latest version of the
 * accounts and transfers a thread has read, with that version's body, kept
 * current by the tally_versions channel, so a read of a current version is
 * answered (200, or 304 for a matching If-None-Match) without the database.
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

/**
 * The current version of the tenant's resource and its body (borrowed until
 * the loop runs again), when this thread read that version; false when the
 * cache cannot say.
 */
bool qa_versions_lookup(qa_versions_t *v, char kind, const tly_uuid_t *id, const tly_uuid_t *tenant, int64_t *version,
                        const char **body, size_t *body_len);

/** Counts a read answered from the cache (tally_reads_from_memory_total{status}). */
void qa_versions_hit(qa_versions_t *v, int status);

/**
 * Stores the version a read returned, and its body when it is at most
 * `body_max` bytes (only such versions are answered from the cache), unless
 * the ticket says something was missed meanwhile.
 */
void qa_versions_note(qa_versions_t *v, qa_versions_ticket_t ticket, char kind, const tly_uuid_t *id, const tly_uuid_t *tenant,
                      int64_t version, const char *body, size_t body_len, size_t body_max);

/* For tests: a cache without a connection that trusts itself, and a way to hand it a notification's payload. */
qa_versions_t *qa_versions_create_offline(size_t capacity);
void qa_versions_notify(qa_versions_t *v, const char *payload);

#endif
