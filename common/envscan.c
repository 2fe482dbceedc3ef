/*
 * The envelope scanner: tly_envelope_parse for the shape Tally writes,
 * without building a jansson tree of the whole envelope.
 *
 * The shape: one object whose values are strings, integers, true, false or
 * null, plus `data`, an object of the same scalars (no arrays, no deeper
 * nesting); strings of printable ASCII without escapes; integers of at most
 * 18 digits. The envelope's fields are read straight from the bytes; only
 * `data` is built with jansson, since the projections read it as json_t.
 *
 * Why it cannot disagree with tly_envelope_parse: it accepts a subset of
 * JSON in which every value means the same to jansson (same strings, same
 * integers, keys in document order, duplicate keys refused as
 * JSON_REJECT_DUPLICATES refuses them), then applies the same checks to the
 * same values (tly_uuid_parse, tly_clock_parse_rfc3339, the lengths and the
 * version range). Whatever falls outside, or fails a check, is declined and
 * goes to tly_envelope_parse, which gives the result and the error message.
 * tests/unit/common/test_envscan.c compares the two on mutated envelopes.
 */
#include "tally/envscan.h"

#include "tally/clock.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MAX_KEYS 32 /* per object; more: declined */

typedef struct st_scan_t {
    const char *p, *end;
} scan_t;

typedef struct st_tok_t {
    const char *s; /* a string's bytes, without the quotes; NULL when absent */
    size_t n;
} tok_t;

typedef enum en_kind_t { K_STRING, K_INT, K_NULL, K_TRUE, K_FALSE } kind_t;

typedef struct st_value_t {
    kind_t kind;
    tok_t str;
    int64_t i;
} value_t;

static void
skip_ws(scan_t *sc)
{
    while (sc->p < sc->end && (*sc->p == ' ' || *sc->p == '\t' || *sc->p == '\n' || *sc->p == '\r'))
        ++sc->p;
}

static bool
take(scan_t *sc, char c)
{
    skip_ws(sc);
    if (sc->p < sc->end && *sc->p == c) {
        ++sc->p;
        return true;
    }
    return false;
}

/* A string of printable ASCII without escapes. */
static bool
scan_string(scan_t *sc, tok_t *t)
{
    if (!take(sc, '"'))
        return false;
    const char *s = sc->p;
    while (sc->p < sc->end && *sc->p != '"') {
        unsigned char c = (unsigned char)*sc->p;
        if (c < 0x20 || c > 0x7e || c == '\\')
            return false;
        ++sc->p;
    }
    if (sc->p == sc->end)
        return false;
    t->s = s;
    t->n = (size_t)(sc->p - s);
    ++sc->p;
    return true;
}

static bool
is_digit(const scan_t *sc, const char *p)
{
    return p < sc->end && *p >= '0' && *p <= '9';
}

/* -?(0|[1-9][0-9]{0,17}), not followed by a fraction or an exponent; "-0" declined. */
static bool
scan_int(scan_t *sc, int64_t *out)
{
    const char *p = sc->p;
    bool neg = p < sc->end && *p == '-';
    if (neg)
        ++p;
    if (!is_digit(sc, p) || (*p == '0' && (neg || is_digit(sc, p + 1))))
        return false;
    int64_t v = 0;
    int n = 0;
    while (is_digit(sc, p)) {
        if (++n > 18)
            return false;
        v = v * 10 + (*p++ - '0');
    }
    if (p < sc->end && (*p == '.' || *p == 'e' || *p == 'E'))
        return false;
    *out = neg ? -v : v;
    sc->p = p;
    return true;
}

static bool
scan_word(scan_t *sc, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(sc->end - sc->p) < n || memcmp(sc->p, word, n) != 0)
        return false;
    sc->p += n;
    return true;
}

static bool
scan_scalar(scan_t *sc, value_t *v)
{
    skip_ws(sc);
    if (sc->p == sc->end)
        return false;
    switch (*sc->p) {
    case '"':
        v->kind = K_STRING;
        return scan_string(sc, &v->str);
    case 'n':
        v->kind = K_NULL;
        return scan_word(sc, "null");
    case 't':
        v->kind = K_TRUE;
        return scan_word(sc, "true");
    case 'f':
        v->kind = K_FALSE;
        return scan_word(sc, "false");
    default:
        v->kind = K_INT;
        return scan_int(sc, &v->i);
    }
}

static bool
tok_is(const tok_t *t, const char *s)
{
    return t->s != NULL && t->n == strlen(s) && memcmp(t->s, s, t->n) == 0;
}

/* Reads a key and its colon; false for a key this object had already (or one too many). */
static bool
scan_key(scan_t *sc, tok_t *keys, int *nkeys, tok_t *key)
{
    if (*nkeys == MAX_KEYS || !scan_string(sc, key) || !take(sc, ':'))
        return false;
    for (int i = 0; i < *nkeys; ++i)
        if (keys[i].n == key->n && memcmp(keys[i].s, key->s, key->n) == 0)
            return false;
    keys[(*nkeys)++] = *key;
    return true;
}

static json_t *
value_json(const value_t *v)
{
    switch (v->kind) {
    case K_STRING:
        return json_stringn_nocheck(v->str.s, v->str.n); /* printable ASCII: valid UTF-8 */
    case K_INT:
        return json_integer(v->i);
    case K_TRUE:
        return json_true();
    case K_FALSE:
        return json_false();
    case K_NULL:
        break;
    }
    return json_null();
}

/* `data`: an object of scalars, built in document order like jansson's parser builds it. NULL: declined. */
static json_t *
scan_data(scan_t *sc)
{
    tok_t keys[MAX_KEYS];
    int nkeys = 0;
    if (!take(sc, '{'))
        return NULL;
    json_t *o = json_object();
    if (o == NULL || take(sc, '}'))
        return o;
    do {
        tok_t k;
        value_t v = {0};
        char key[128];
        if (!scan_key(sc, keys, &nkeys, &k) || k.n >= sizeof(key) || !scan_scalar(sc, &v))
            goto decline;
        memcpy(key, k.s, k.n);
        key[k.n] = '\0';
        if (json_object_set_new_nocheck(o, key, value_json(&v)) != 0)
            goto decline;
    } while (take(sc, ','));
    if (take(sc, '}'))
        return o;
decline:
    json_decref(o);
    return NULL;
}

/* The envelope's own fields, as found (tok.s NULL: absent; null_ok fields may be JSON null). */
typedef struct st_fields_t {
    tok_t id, type, aggregate_type, aggregate_id, tenant_id, job_id, causation_id, correlation_id, occurred_at;
    bool has_version;
    int64_t version;
} fields_t;

/* Records one top-level scalar; false for a known field of the wrong JSON type. */
static bool
take_field(fields_t *f, const tok_t *key, const value_t *v)
{
    static const struct {
        const char *name;
        size_t off;
        bool null_ok;
    } strs[] = {
        {"id", offsetof(fields_t, id), false},
        {"type", offsetof(fields_t, type), false},
        {"aggregate_type", offsetof(fields_t, aggregate_type), false},
        {"aggregate_id", offsetof(fields_t, aggregate_id), false},
        {"tenant_id", offsetof(fields_t, tenant_id), false},
        {"job_id", offsetof(fields_t, job_id), true},
        {"causation_id", offsetof(fields_t, causation_id), true},
        {"correlation_id", offsetof(fields_t, correlation_id), true},
        {"occurred_at", offsetof(fields_t, occurred_at), false},
    };
    if (tok_is(key, "version")) {
        f->has_version = v->kind == K_INT;
        f->version = v->i;
        return f->has_version;
    }
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); ++i) {
        if (!tok_is(key, strs[i].name))
            continue;
        if (v->kind == K_STRING)
            *(tok_t *)((char *)f + strs[i].off) = v->str;
        return v->kind == K_STRING || (v->kind == K_NULL && strs[i].null_ok);
    }
    return true; /* a field the envelope does not read */
}

/* Copies t into a NUL-terminated buffer of `cap`; false when absent, empty or too long. */
static bool
tok_cstr(const tok_t *t, char *out, size_t cap)
{
    if (t->s == NULL || t->n == 0 || t->n >= cap)
        return false;
    memcpy(out, t->s, t->n);
    out[t->n] = '\0';
    return true;
}

/* An id as get_uuid reads it: absent (or null) is the nil uuid where that is allowed. */
static bool
tok_uuid(const tok_t *t, bool nullable, tly_uuid_t *out)
{
    char s[TLY_UUID_STR_LEN + 1];
    memset(out, 0, sizeof(*out));
    if (t->s == NULL)
        return nullable;
    return tok_cstr(t, s, sizeof(s)) && tly_uuid_parse(s, out);
}

/* The checks of tly_envelope_parse on the fields found. */
static bool
fill(const fields_t *f, tly_envelope_t *env)
{
    char when[64];
    return tok_uuid(&f->id, false, &env->id) && tok_cstr(&f->type, env->type, sizeof(env->type)) &&
           tok_cstr(&f->aggregate_type, env->aggregate_type, sizeof(env->aggregate_type)) &&
           tok_uuid(&f->aggregate_id, false, &env->aggregate_id) && tok_uuid(&f->tenant_id, false, &env->tenant_id) &&
           tok_uuid(&f->job_id, true, &env->job_id) && tok_uuid(&f->causation_id, true, &env->causation_id) &&
           tok_uuid(&f->correlation_id, true, &env->correlation_id) && f->has_version && f->version >= 1 && f->version <= 1000 &&
           tok_cstr(&f->occurred_at, when, sizeof(when)) && tly_clock_parse_rfc3339(when, &env->occurred_at_us);
}

int
tly_envelope_scan(const char *buf, size_t len, tly_envelope_t *env)
{
    scan_t sc = {buf, buf + len};
    tok_t keys[MAX_KEYS];
    int nkeys = 0;
    fields_t f;
    json_t *data = NULL;
    memset(&f, 0, sizeof(f));
    memset(env, 0, sizeof(*env));
    if (!take(&sc, '{'))
        goto decline;
    do {
        tok_t k;
        value_t v = {0};
        if (!scan_key(&sc, keys, &nkeys, &k))
            goto decline;
        if (tok_is(&k, "data")) {
            if ((data = scan_data(&sc)) == NULL)
                goto decline;
        } else if (!scan_scalar(&sc, &v) || !take_field(&f, &k, &v)) {
            goto decline;
        }
    } while (take(&sc, ','));
    if (!take(&sc, '}'))
        goto decline;
    skip_ws(&sc);
    if (sc.p != sc.end || data == NULL || !fill(&f, env))
        goto decline;
    env->version = (int)f.version;
    env->data = data;
    return 0;
decline:
    json_decref(data);
    memset(env, 0, sizeof(*env));
    return 1;
}
