/* Pure parts of webhook delivery. See webhook.h and docs/webhooks.md. */
#include "webhook.h"
#include "tally/clock.h"
#include "tally/json.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Namespace of delivery ids (v5 of endpoint id bytes + event id bytes). */
static const tly_uuid_t delivery_ns = {
    {0x5c, 0x1e, 0x0b, 0x6f, 0x2a, 0x4d, 0x4e, 0x51, 0x9b, 0x7e, 0x0d, 0x52, 0x1a, 0x88, 0x3f, 0x64}};
/* Namespace of WebhookEndpointDisabled event ids. */
static const tly_uuid_t disabled_ns = {
    {0x8e, 0x3a, 0x61, 0x02, 0x7c, 0x19, 0x4f, 0x0d, 0xa5, 0x43, 0x2b, 0x96, 0xe1, 0x70, 0x0c, 0x2f}};

/* Steps of the retry schedule, seconds: the delay after failed attempt n is steps[n - 1]. */
static const int64_t retry_steps_s[TLY_WEBHOOK_MAX_ATTEMPTS - 1] = {
    5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 14 * 3600, 20 * 3600, 24 * 3600,
};

static json_t *
uuid_or_null(const tly_uuid_t *u)
{
    char s[TLY_UUID_STR_LEN + 1];
    if (tly_uuid_is_nil(u))
        return json_null();
    tly_uuid_format(u, s);
    return json_string(s);
}

/* data = the ids of the event, then (unless `thin`) its own fields; an own field never replaces an id. */
static json_t *
body_data(const tly_envelope_t *env, bool thin)
{
    json_t *d = json_object();
    json_object_set_new(d, "event_id", uuid_or_null(&env->id));
    json_object_set_new(d, "event_version", json_integer(env->version));
    json_object_set_new(d, "aggregate_type", json_string(env->aggregate_type));
    json_object_set_new(d, "aggregate_id", uuid_or_null(&env->aggregate_id));
    json_object_set_new(d, "job_id", uuid_or_null(&env->job_id));
    json_object_set_new(d, "correlation_id", uuid_or_null(&env->correlation_id));
    if (thin)
        json_object_set_new(d, "truncated", json_true());
    else if (json_is_object(env->data))
        json_object_update_missing(d, env->data);
    return d;
}

char *
tly_webhook_body(const tly_envelope_t *env, bool *truncated)
{
    char ts[40];
    tly_clock_format_rfc3339(env->occurred_at_us, ts, sizeof(ts));
    *truncated = false;
    for (int thin = 0; thin <= 1; ++thin) {
        json_t *body = json_pack("{s:s, s:s, s:o}", "type", env->type, "timestamp", ts, "data", body_data(env, thin));
        char *s = tly_json_dump(body);
        json_decref(body);
        if (strlen(s) <= TLY_WEBHOOK_BODY_MAX || thin) {
            *truncated = thin;
            return s;
        }
        free(s);
    }
    return NULL; /* not reached */
}

tly_uuid_t
tly_webhook_delivery_id(const tly_uuid_t *endpoint, const tly_uuid_t *event)
{
    uint8_t name[32];
    memcpy(name, endpoint->b, 16);
    memcpy(name + 16, event->b, 16);
    return tly_uuid_v5(&delivery_ns, name, sizeof(name));
}

bool
tly_webhook_subscribed(const json_t *types, const char *type)
{
    size_t i;
    json_t *v;
    json_array_foreach(types, i, v)
    {
        const char *s = json_string_value(v);
        if (s != NULL && (strcmp(s, "*") == 0 || strcmp(s, type) == 0))
            return true;
    }
    return false;
}

int64_t
tly_webhook_retry_delay_us(int attempt, double rnd, int64_t time_scale)
{
    if (attempt < 1 || attempt >= TLY_WEBHOOK_MAX_ATTEMPTS)
        return -1;
    if (time_scale < 1)
        time_scale = 1;
    if (rnd < 0 || rnd >= 1)
        rnd = 0;
    int64_t hi = retry_steps_s[attempt - 1] * 1000000;
    int64_t lo = attempt >= 2 ? retry_steps_s[attempt - 2] * 1000000 : 0;
    int64_t d = lo + (int64_t)((double)(hi - lo) * rnd);
    return d / time_scale;
}

bool
tly_webhook_parse_retry_after(const char *value, int64_t now_us, int64_t *delay_us)
{
    while (*value == ' ' || *value == '\t')
        ++value;
    size_t n = strlen(value);
    while (n > 0 && (value[n - 1] == ' ' || value[n - 1] == '\t' || value[n - 1] == '\r' || value[n - 1] == '\n'))
        --n;
    if (n == 0)
        return false;
    int64_t d = -1;
    if (strspn(value, "0123456789") == n) {
        d = n > 12 ? TLY_WEBHOOK_RETRY_AFTER_MAX_US : strtoll(value, NULL, 10) * 1000000;
    } else {
        char buf[64];
        struct tm tm;
        if (n >= sizeof(buf))
            return false;
        memcpy(buf, value, n);
        buf[n] = '\0';
        memset(&tm, 0, sizeof(tm));
        const char *end = strptime(buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        if (end == NULL || *end != '\0')
            return false;
        d = (int64_t)timegm(&tm) * 1000000 - now_us;
    }
    if (d < 0)
        d = 0;
    if (d > TLY_WEBHOOK_RETRY_AFTER_MAX_US)
        d = TLY_WEBHOOK_RETRY_AFTER_MAX_US;
    *delay_us = d;
    return true;
}

void
tly_webhook_disabled_event(tly_envelope_t *out, const tly_uuid_t *endpoint, const tly_uuid_t *tenant, int64_t version,
                           const char *url, const char *reason, int64_t failing_since_us, int64_t now_us)
{
    char name[64], id[TLY_UUID_STR_LEN + 1], since[40];
    tly_uuid_format(endpoint, id);
    int n = snprintf(name, sizeof(name), "%s/%lld", id, (long long)version);
    memset(out, 0, sizeof(*out));
    out->id = tly_uuid_v5(&disabled_ns, name, (size_t)n);
    snprintf(out->type, sizeof(out->type), "WebhookEndpointDisabled");
    out->version = TLY_WEBHOOK_EVENT_VERSION;
    snprintf(out->aggregate_type, sizeof(out->aggregate_type), "webhook_endpoint");
    out->aggregate_id = *endpoint;
    out->tenant_id = *tenant;
    out->correlation_id = out->id;
    out->occurred_at_us = now_us;
    json_t *since_v = json_null();
    if (failing_since_us > 0) {
        tly_clock_format_rfc3339(failing_since_us, since, sizeof(since));
        since_v = json_string(since);
    }
    out->data = json_pack("{s:s, s:s, s:s, s:o}", "endpoint_id", id, "url", url, "reason", reason, "failing_since", since_v);
}
