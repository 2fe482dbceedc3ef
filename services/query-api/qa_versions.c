/*
 * The read cache: per thread, the latest version of the accounts and
 * transfers this thread has read, with the body of that version, kept
 * current by the tally_versions channel (migrations/0004_version_notify.sql),
 * so that a read of a resource whose current version is in memory is
 * answered without a database read: 200 with the body, or 304 when
 * If-None-Match names it. Only bodies under the gzip threshold are kept, so
 * an answer from memory has exactly the headers the database path gives.
 *
 * Correctness rests on three rules:
 *   - versions only grow, and every entry takes the highest version it has
 *     heard of (from a read or a notification), so a read that returns after
 *     a newer notification cannot make an entry go back;
 *   - a read's version is only stored when nothing about its resource was
 *     missed between the read's start and its answer: a ticket taken at the
 *     start holds `gen` (bumped when the whole cache is emptied: LISTEN lost
 *     or restarted, '*' from a replay swap) and the resource's `heard`
 *     counter (bumped when a notification finds no entry to raise, or when
 *     the entry is evicted), and the answer is stored only if both are
 *     unchanged;
 *   - the cache answers only while listening and after the triggers were
 *     found on the live tables.
 * A hit still checks the tenant: the cache never says anything about another
 * tenant's resource. A miss, a stale tag or any doubt goes to the database.
 */
#include "qa_versions.h"
#include "query_internal.h"
#include "tally/log.h"
#include "tally/metrics.h"

#include <stdlib.h>
#include <string.h>

#define CHANNEL "tally_versions"
#define WAYS 4
#define HEARD 4096 /* power of two */

typedef struct st_slot_t {
    tly_uuid_t id;
    tly_uuid_t tenant;
    int64_t version;      /* 0: empty */
    int64_t read_version; /* the version whose body this thread read */
    char *body;           /* that body, when it is under the gzip threshold (no Vary, strong ETag); else NULL */
    size_t body_len;
    char kind;
} slot_t;

struct st_qa_versions_t {
    query_thread_t *thr;
    tly_pglisten_t *listen;
    bool offline; /* tests: no connection; notifications come from qa_versions_notify */
    bool listening;
    bool checked; /* the triggers exist on the live tables */
    bool checking;
    bool check_failed; /* the check could not run (database not reachable yet): run it again on next use */
    uint64_t gen;
    uint32_t heard[HEARD]; /* by hash of (kind, id): changes this cache did not record */
    size_t nsets;          /* power of two */
    unsigned victim;
    slot_t *slots; /* nsets * WAYS */
    tly_series_t *hits_200, *hits_304;
};

static uint64_t
hash(char kind, const tly_uuid_t *id)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)(unsigned char)kind;
    for (size_t i = 0; i < sizeof(id->b); ++i)
        h = (h ^ id->b[i]) * 1099511628211ull;
    return h;
}

static size_t
set_of(const qa_versions_t *v, char kind, const tly_uuid_t *id)
{
    return (size_t)(hash(kind, id) & (v->nsets - 1)) * WAYS;
}

static uint32_t *
heard_of(qa_versions_t *v, char kind, const tly_uuid_t *id)
{
    return &v->heard[(hash(kind, id) >> 32) & (HEARD - 1)];
}

static slot_t *
find(qa_versions_t *v, char kind, const tly_uuid_t *id)
{
    slot_t *set = &v->slots[set_of(v, kind, id)];
    for (int w = 0; w < WAYS; ++w)
        if (set[w].version != 0 && set[w].kind == kind && memcmp(&set[w].id, id, sizeof(*id)) == 0)
            return &set[w];
    return NULL;
}

static void
slot_reset(slot_t *s)
{
    free(s->body);
    memset(s, 0, sizeof(*s));
}

/* An empty slot for a new entry: a free one, else a victim, whose readers in flight must not store what they read. */
static slot_t *
claim(qa_versions_t *v, char kind, const tly_uuid_t *id)
{
    slot_t *set = &v->slots[set_of(v, kind, id)], *s = NULL;
    for (int w = 0; w < WAYS && s == NULL; ++w)
        if (set[w].version == 0)
            s = &set[w];
    if (s == NULL) {
        s = &set[v->victim++ % WAYS];
        ++*heard_of(v, s->kind, &s->id);
        slot_reset(s);
    }
    s->id = *id;
    s->kind = kind;
    return s;
}

static void
clear(qa_versions_t *v)
{
    for (size_t i = 0; i < v->nsets * WAYS; ++i)
        slot_reset(&v->slots[i]);
    ++v->gen;
}

static void
raise_version(qa_versions_t *v, char kind, const tly_uuid_t *id, int64_t version)
{
    slot_t *s = find(v, kind, id);
    if (s == NULL) {
        ++*heard_of(v, kind, id); /* a read in flight may return an older version: it must not store it */
        return;
    }
    if (version > s->version)
        s->version = version;
}

/* "<kind> <id>:<version>,..." from the triggers, or "*" after a replay swap. */
static void
on_notify(void *data, const char *payload)
{
    qa_versions_t *v = data;
    if (strcmp(payload, "*") == 0) {
        tly_log(TLY_LOG_INFO, "read models were swapped: read cache emptied", NULL);
        v->checked = false;
        clear(v);
        qa_versions_check(v);
        return;
    }
    char kind = payload[0];
    if ((kind != 'a' && kind != 't') || payload[1] != ' ')
        return;
    const char *p = payload + 2;
    while (*p != '\0') {
        char idtext[TLY_UUID_STR_LEN + 1];
        const char *colon = strchr(p, ':');
        if (colon == NULL || colon - p != TLY_UUID_STR_LEN)
            break;
        memcpy(idtext, p, TLY_UUID_STR_LEN);
        idtext[TLY_UUID_STR_LEN] = '\0';
        char *end;
        long long version = strtoll(colon + 1, &end, 10);
        tly_uuid_t id;
        if (!tly_uuid_parse(idtext, &id) || version <= 0)
            break;
        raise_version(v, kind, &id, version);
        p = *end == ',' ? end + 1 : end;
        if (*end != ',' && *end != '\0')
            break;
    }
}

static void
on_listening(void *data)
{
    qa_versions_t *v = data;
    /* notifications may have been missed while the connection was down */
    v->listening = true;
    clear(v);
    qa_versions_check(v);
}

static void
on_checked(void *data, PGresult *res, const char *err)
{
    qa_versions_t *v = data;
    v->checking = false;
    v->check_failed = res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK;
    bool ok =
        res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "2") == 0;
    if (!ok && res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK)
        tly_log(TLY_LOG_WARN, "version triggers missing on the read models: If-None-Match always reads the database", NULL);
    v->checked = ok;
    clear(v);
}

void
qa_versions_check(qa_versions_t *v)
{
    if (v->checking || v->thr->pg == NULL)
        return;
    v->checking = true;
    tly_pgpool_exec(v->thr->pg, STMT_VERSION_TRIGGERS, NULL, on_checked, v);
}

qa_versions_t *
qa_versions_create(query_thread_t *thr, const char *dsn, size_t capacity)
{
    qa_versions_t *v = calloc(1, sizeof(*v));
    if (v == NULL)
        abort();
    v->thr = thr;
    tly_metric_t *m = tly_metrics_counter(tly_metrics_default(), "tally_reads_from_memory_total",
                                          "Account and transfer reads answered from the version cache, without a database "
                                          "read, by status (200 or 304).",
                                          "status", 2);
    v->hits_200 = tly_metric_s1(m, "200");
    v->hits_304 = tly_metric_s1(m, "304");
    v->nsets = 1;
    while (v->nsets * WAYS < capacity)
        v->nsets <<= 1;
    v->slots = calloc(v->nsets * WAYS, sizeof(slot_t));
    if (v->slots == NULL)
        abort();
    if (capacity > 0)
        v->listen = tly_pglisten_create(thr->loop, dsn, CHANNEL, on_notify, on_listening, v);
    return v;
}

qa_versions_t *
qa_versions_create_offline(size_t capacity)
{
    static query_thread_t none;
    qa_versions_t *v = qa_versions_create(&none, NULL, 0);
    free(v->slots);
    while (v->nsets * WAYS < capacity)
        v->nsets <<= 1;
    v->slots = calloc(v->nsets * WAYS, sizeof(slot_t));
    if (v->slots == NULL)
        abort();
    v->offline = v->listening = v->checked = true;
    return v;
}

void
qa_versions_notify(qa_versions_t *v, const char *payload)
{
    on_notify(v, payload);
}

void
qa_versions_destroy(qa_versions_t *v)
{
    if (v == NULL)
        return;
    if (v->listen != NULL)
        tly_pglisten_destroy(v->listen);
    clear(v);
    free(v->slots);
    free(v);
}

static bool
usable(qa_versions_t *v)
{
    if (v->offline)
        return true;
    if (v->listen == NULL)
        return false;
    if (v->listening && !tly_pglisten_ready(v->listen)) {
        v->listening = false; /* on_listening clears and re-checks when it is back */
        ++v->gen;
    }
    if (v->listening && v->check_failed && !v->checking) {
        v->check_failed = false;
        qa_versions_check(v);
    }
    return v->listening && v->checked;
}

qa_versions_ticket_t
qa_versions_ticket(qa_versions_t *v, char kind, const tly_uuid_t *id)
{
    qa_versions_ticket_t t = {.valid = usable(v), .gen = v->gen, .heard = *heard_of(v, kind, id)};
    return t;
}

bool
qa_versions_lookup(qa_versions_t *v, char kind, const tly_uuid_t *id, const tly_uuid_t *tenant, int64_t *version, const char **body,
                   size_t *body_len)
{
    if (!usable(v))
        return false;
    slot_t *s = find(v, kind, id);
    /* only the current version whose (small) body this thread read: the answer must be the one the database would give */
    if (s == NULL || memcmp(&s->tenant, tenant, sizeof(*tenant)) != 0 || s->version != s->read_version || s->body == NULL)
        return false;
    *version = s->version;
    *body = s->body;
    *body_len = s->body_len;
    return true;
}

void
qa_versions_hit(qa_versions_t *v, int status)
{
    tly_counter_add(status == 304 ? v->hits_304 : v->hits_200, 1);
}

void
qa_versions_note(qa_versions_t *v, qa_versions_ticket_t ticket, char kind, const tly_uuid_t *id, const tly_uuid_t *tenant,
                 int64_t version, const char *body, size_t body_len, size_t body_max)
{
    if (!ticket.valid || !usable(v) || v->gen != ticket.gen || *heard_of(v, kind, id) != ticket.heard || version <= 0)
        return;
    slot_t *s = find(v, kind, id);
    if (s == NULL)
        s = claim(v, kind, id);
    s->tenant = *tenant;
    if (version > s->version)
        s->version = version;
    if (version > s->read_version || (version == s->read_version && s->body == NULL)) {
        free(s->body);
        s->body = NULL;
        s->body_len = 0;
        s->read_version = version;
        if (body_len <= body_max && (s->body = malloc(body_len + 1)) != NULL) {
            memcpy(s->body, body, body_len);
            s->body[body_len] = '\0';
            s->body_len = body_len;
        }
    }
}
