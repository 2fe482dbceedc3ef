/* Stateless validation of webhook endpoint requests. See webhook_spec.h. */
#include "webhook_spec.h"
#include "commands.h"
#include "tally/clock.h"
#include "tally/http.h"
#include "tally/ledger/catalogue.h"
#include "tally/webhook_url.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every type of the catalogue (sorted in strcmp order); tests/unit/command-api/test_webhook_spec.c
   checks it against schemas/events/ both ways, so a new event type cannot be forgotten. */
const char *const *
tly_webhook_event_types(size_t *n)
{
    return tly_catalogue_types(n);
}

static int
cmp_name(const void *key, const void *elem)
{
    return strcmp(key, *(const char *const *)elem);
}

bool
tly_webhook_event_type_known(const char *name)
{
    size_t n;
    const char *const *types = tly_catalogue_types(&n);
    return bsearch(name, types, n, sizeof(types[0]), cmp_name) != NULL;
}

static void
check_unknown_fields(const json_t *body, bool patch, json_t *errors)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)body, key, v)
    {
        bool known = strcmp(key, "url") == 0 || strcmp(key, "event_types") == 0 || strcmp(key, "description") == 0 ||
                     (patch && strcmp(key, "enabled") == 0);
        if (!known)
            tly_http_field_error(errors, key, "unknown field");
    }
}

static void
check_url(const json_t *body, bool required, bool allow_private, tly_webhook_fields_t *out, json_t *errors)
{
    char err[256];
    json_t *v = json_object_get(body, "url");
    if (v == NULL) {
        if (required)
            tly_http_field_error(errors, "url", "is required");
        return;
    }
    if (!json_is_string(v)) {
        tly_http_field_error(errors, "url", "must be a string");
        return;
    }
    /* the sender checks every resolved address again when it connects */
    if (tly_webhook_url_check(json_string_value(v), allow_private, false, err, sizeof(err)) != 0) {
        tly_http_field_error(errors, "url", err);
        return;
    }
    out->url = json_string_value(v);
}

/* Adds `name` unless it is already there. */
static void
add_type(tly_webhook_fields_t *out, const char *name)
{
    for (size_t i = 0; i < out->ntypes; ++i)
        if (strcmp(out->types[i], name) == 0)
            return;
    if (out->ntypes < TLY_WEBHOOK_TYPES_MAX) /* cannot fill up: every name is known and unique */
        out->types[out->ntypes++] = name;
}

static void
check_types(const json_t *body, bool required, tly_webhook_fields_t *out, json_t *errors)
{
    char msg[160];
    size_t i;
    json_t *v = json_object_get(body, "event_types"), *item;
    if (v == NULL) {
        if (required)
            tly_http_field_error(errors, "event_types", "is required");
        return;
    }
    if (!json_is_array(v) || json_array_size(v) == 0) {
        tly_http_field_error(errors, "event_types", "must be a non-empty array of event type names, or [\"*\"] for every type");
        return;
    }
    bool bad = false;
    json_array_foreach(v, i, item)
    {
        const char *name = json_string_value(item);
        if (name == NULL || (strcmp(name, "*") != 0 && !tly_webhook_event_type_known(name))) {
            snprintf(msg, sizeof(msg), "element %zu is not a Tally event type (e.g. FundsDeposited) nor \"*\"", i);
            tly_http_field_error(errors, "event_types", msg);
            bad = true;
            continue;
        }
        add_type(out, name);
    }
    bool star = false;
    for (size_t k = 0; k < out->ntypes; ++k)
        star = star || strcmp(out->types[k], "*") == 0;
    if (!bad && star && out->ntypes > 1) {
        tly_http_field_error(errors, "event_types", "\"*\" already means every event type: give it alone");
        bad = true;
    }
    if (bad)
        out->ntypes = 0;
}

static void
check_description(const json_t *body, tly_webhook_fields_t *out, json_t *errors)
{
    char msg[64];
    json_t *v = json_object_get(body, "description");
    if (v == NULL)
        return;
    if (!json_is_string(v)) {
        tly_http_field_error(errors, "description", "must be a string");
    } else if (tly_utf8_chars(json_string_value(v)) > TLY_WEBHOOK_DESCRIPTION_MAX_CHARS) {
        snprintf(msg, sizeof(msg), "must be at most %d characters", TLY_WEBHOOK_DESCRIPTION_MAX_CHARS);
        tly_http_field_error(errors, "description", msg);
    } else {
        out->description = json_string_value(v);
    }
}

static bool
validate(const json_t *body, bool patch, bool allow_private, tly_webhook_fields_t *out, json_t *errors)
{
    size_t before = json_array_size(errors);
    memset(out, 0, sizeof(*out));
    out->enabled = -1;
    if (!json_is_object(body)) {
        tly_http_field_error(errors, "", "the body must be a JSON object");
        return false;
    }
    check_unknown_fields(body, patch, errors);
    check_url(body, !patch, allow_private, out, errors);
    check_types(body, !patch, out, errors);
    check_description(body, out, errors);
    if (patch) {
        json_t *enabled = json_object_get(body, "enabled");
        if (enabled != NULL && !json_is_boolean(enabled))
            tly_http_field_error(errors, "enabled", "must be true or false");
        else if (enabled != NULL)
            out->enabled = json_is_true(enabled);
        if (json_object_size(body) == 0)
            tly_http_field_error(errors, "", "give at least one of url, event_types, description, enabled");
    }
    return json_array_size(errors) == before;
}

bool
tly_webhook_validate_create(const json_t *body, bool allow_private, tly_webhook_fields_t *out, json_t *errors)
{
    return validate(body, false, allow_private, out, errors);
}

bool
tly_webhook_validate_patch(const json_t *body, bool allow_private, tly_webhook_fields_t *out, json_t *errors)
{
    return validate(body, true, allow_private, out, errors);
}

static bool
check_time(const json_t *body, const char *field, int64_t *out, json_t *errors)
{
    json_t *v = json_object_get(body, field);
    if (v == NULL) {
        tly_http_field_error(errors, field, "is required");
        return false;
    }
    if (!json_is_string(v) || !tly_clock_parse_rfc3339(json_string_value(v), out)) {
        tly_http_field_error(errors, field, "must be an RFC 3339 time, e.g. 2026-11-22T10:00:00Z");
        return false;
    }
    return true;
}

bool
tly_webhook_validate_replay(const json_t *body, int64_t *since_us, int64_t *until_us, json_t *errors)
{
    char msg[64];
    size_t before = json_array_size(errors);
    const char *key;
    json_t *v;
    if (!json_is_object(body)) {
        tly_http_field_error(errors, "", "the body must be a JSON object");
        return false;
    }
    json_object_foreach((json_t *)body, key, v)
    {
        if (strcmp(key, "since") != 0 && strcmp(key, "until") != 0)
            tly_http_field_error(errors, key, "unknown field");
    }
    bool have_since = check_time(body, "since", since_us, errors);
    bool have_until = check_time(body, "until", until_us, errors);
    if (have_since && have_until) {
        if (*since_us >= *until_us) {
            tly_http_field_error(errors, "until", "must be later than since");
        } else if (*until_us - *since_us > (int64_t)TLY_WEBHOOK_REPLAY_MAX_DAYS * 86400 * 1000000) {
            snprintf(msg, sizeof(msg), "must be at most %d days after since", TLY_WEBHOOK_REPLAY_MAX_DAYS);
            tly_http_field_error(errors, "until", msg);
        }
    }
    return json_array_size(errors) == before;
}

bool
tly_webhook_types_pg(const tly_webhook_fields_t *f, char *out, size_t cap)
{
    size_t len = 0;
    if (cap < 3)
        return false;
    out[len++] = '{';
    for (size_t i = 0; i < f->ntypes; ++i) {
        /* names are [A-Za-z] or "*": nothing to escape inside the quotes */
        size_t need = strlen(f->types[i]) + 3;
        if (len + need + 2 > cap)
            return false;
        len += (size_t)snprintf(out + len, cap - len, "%s\"%s\"", i > 0 ? "," : "", f->types[i]);
    }
    out[len++] = '}';
    out[len] = '\0';
    return true;
}

void
tly_webhook_secret_generate(char *out)
{
    unsigned char raw[TLY_WEBHOOK_SECRET_BYTES];
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        abort();
    size_t prefix = sizeof(TLY_WEBHOOK_SECRET_PREFIX) - 1;
    memcpy(out, TLY_WEBHOOK_SECRET_PREFIX, prefix);
    /* EVP_EncodeBlock writes the padded base64 and a NUL */
    EVP_EncodeBlock((unsigned char *)out + prefix, raw, (int)sizeof(raw));
    OPENSSL_cleanse(raw, sizeof(raw));
}
