/* Event envelope: wire format, parsing, deterministic derivation, traceparent. */
#include "tally/envelope.h"
#include "tally/clock.h"
#include "tally/json.h"

#include <stdio.h>
#include <string.h>

/* Namespace for derived event ids (a random v4 fixed at design time). */
static const tly_uuid_t derived_event_ns = {
    {0x6b, 0x1f, 0x2e, 0x51, 0x8c, 0x0d, 0x4a, 0x3e, 0x9f, 0x27, 0x44, 0x0b, 0x5d, 0xa1, 0x93, 0xc8}};

static json_t *
uuid_json(const tly_uuid_t *u)
{
    char s[TLY_UUID_STR_LEN + 1];
    if (tly_uuid_is_nil(u))
        return json_null();
    tly_uuid_format(u, s);
    return json_string(s);
}

char *
tly_envelope_to_json(const tly_envelope_t *env)
{
    char when[40];
    tly_clock_format_rfc3339(env->occurred_at_us, when, sizeof(when));
    json_t *o = json_object();
    json_object_set_new(o, "id", uuid_json(&env->id));
    json_object_set_new(o, "type", json_string(env->type));
    json_object_set_new(o, "version", json_integer(env->version));
    json_object_set_new(o, "aggregate_type", json_string(env->aggregate_type));
    json_object_set_new(o, "aggregate_id", uuid_json(&env->aggregate_id));
    json_object_set_new(o, "tenant_id", uuid_json(&env->tenant_id));
    json_object_set_new(o, "job_id", uuid_json(&env->job_id));
    json_object_set_new(o, "causation_id", uuid_json(&env->causation_id));
    json_object_set_new(o, "correlation_id", uuid_json(&env->correlation_id));
    json_object_set_new(o, "occurred_at", json_string(when));
    json_object_set(o, "data", env->data != NULL ? env->data : json_object());
    char *s = tly_json_dump(o);
    json_decref(o);
    return s;
}

static int
get_uuid(json_t *o, const char *key, bool nullable, tly_uuid_t *out, char *err, size_t errcap)
{
    json_t *v = json_object_get(o, key);
    memset(out, 0, sizeof(*out));
    if (nullable && (v == NULL || json_is_null(v)))
        return 0;
    if (!json_is_string(v) || !tly_uuid_parse(json_string_value(v), out)) {
        snprintf(err, errcap, "envelope field %s is not a uuid", key);
        return -1;
    }
    return 0;
}

static int
get_text(json_t *o, const char *key, char *out, size_t cap, char *err, size_t errcap)
{
    const char *s = tly_json_str(o, key);
    if (s == NULL || s[0] == '\0' || strlen(s) >= cap) {
        snprintf(err, errcap, "envelope field %s is missing or invalid", key);
        return -1;
    }
    memcpy(out, s, strlen(s) + 1);
    return 0;
}

int
tly_envelope_parse(const char *buf, size_t len, tly_envelope_t *env, char *err, size_t errcap)
{
    json_t *o = NULL;
    int ret = -1;
    memset(env, 0, sizeof(*env));
    if (tly_json_parse_strict(buf, len, &o, err, errcap) != TLY_JSON_OK)
        goto cleanup;
    if (!json_is_object(o)) {
        snprintf(err, errcap, "envelope is not a json object");
        goto cleanup;
    }
    json_t *version = json_object_get(o, "version");
    json_t *data = json_object_get(o, "data");
    const char *when = tly_json_str(o, "occurred_at");
    if (get_uuid(o, "id", false, &env->id, err, errcap) != 0 ||
        get_text(o, "type", env->type, sizeof(env->type), err, errcap) != 0 ||
        get_text(o, "aggregate_type", env->aggregate_type, sizeof(env->aggregate_type), err, errcap) != 0 ||
        get_uuid(o, "aggregate_id", false, &env->aggregate_id, err, errcap) != 0 ||
        get_uuid(o, "tenant_id", false, &env->tenant_id, err, errcap) != 0 ||
        get_uuid(o, "job_id", true, &env->job_id, err, errcap) != 0 ||
        get_uuid(o, "causation_id", true, &env->causation_id, err, errcap) != 0 ||
        get_uuid(o, "correlation_id", true, &env->correlation_id, err, errcap) != 0)
        goto cleanup;
    if (!json_is_integer(version) || json_integer_value(version) < 1 || json_integer_value(version) > 1000) {
        snprintf(err, errcap, "envelope field version is not a positive integer");
        goto cleanup;
    }
    env->version = (int)json_integer_value(version);
    if (when == NULL || !tly_clock_parse_rfc3339(when, &env->occurred_at_us)) {
        snprintf(err, errcap, "envelope field occurred_at is not an rfc 3339 time");
        goto cleanup;
    }
    if (!json_is_object(data)) {
        snprintf(err, errcap, "envelope field data is not an object");
        goto cleanup;
    }
    env->data = json_incref(data);
    ret = 0;
cleanup:
    json_decref(o);
    return ret;
}

void
tly_envelope_clear(tly_envelope_t *env)
{
    json_decref(env->data);
    env->data = NULL;
}

void
tly_envelope_derive(tly_envelope_t *out, const tly_envelope_t *cause, const char *type, int version, json_t *data, const char *salt)
{
    char name[TLY_UUID_STR_LEN + TLY_EVENT_TYPE_MAX + 130];
    char cause_id[TLY_UUID_STR_LEN + 1];
    tly_uuid_format(&cause->id, cause_id);
    int n = snprintf(name, sizeof(name), "%s/%s/%s", cause_id, type, salt != NULL ? salt : "");
    memset(out, 0, sizeof(*out));
    out->id = tly_uuid_v5(&derived_event_ns, name, (size_t)n);
    snprintf(out->type, sizeof(out->type), "%s", type);
    out->version = version;
    memcpy(out->aggregate_type, cause->aggregate_type, sizeof(out->aggregate_type));
    out->aggregate_id = cause->aggregate_id;
    out->tenant_id = cause->tenant_id;
    out->job_id = cause->job_id;
    out->causation_id = cause->id;
    out->correlation_id = tly_uuid_is_nil(&cause->correlation_id) ? cause->id : cause->correlation_id;
    out->occurred_at_us = tly_clock_now_us();
    out->data = data;
}

static bool
is_lower_hex(const char *s, size_t n, bool *all_zero)
{
    *all_zero = true;
    for (size_t i = 0; i < n; ++i) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
        if (c != '0')
            *all_zero = false;
    }
    return true;
}

bool
tly_traceparent_valid(const char *s, size_t len)
{
    bool zero_version, zero_trace, zero_span, zero_flags;
    if (len != TLY_TRACEPARENT_LEN || s[2] != '-' || s[35] != '-' || s[52] != '-')
        return false;
    if (!is_lower_hex(s, 2, &zero_version) || memcmp(s, "ff", 2) == 0)
        return false;
    return is_lower_hex(s + 3, 32, &zero_trace) && !zero_trace && is_lower_hex(s + 36, 16, &zero_span) && !zero_span &&
           is_lower_hex(s + 53, 2, &zero_flags);
}

static void
hex_random(char *out, size_t nbytes)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t raw[16];
    tly_random_bytes(raw, nbytes);
    for (size_t i = 0; i < nbytes; ++i) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 0xf];
    }
}

void
tly_traceparent_new(char *out)
{
    memcpy(out, "00-", 3);
    hex_random(out + 3, 16);
    out[35] = '-';
    hex_random(out + 36, 8);
    memcpy(out + 52, "-01", 4);
}

void
tly_traceparent_child(const char *parent, char *out)
{
    memcpy(out, parent, TLY_TRACEPARENT_LEN + 1);
    out[TLY_TRACEPARENT_LEN] = '\0';
    hex_random(out + 36, 8);
}
