/*
 * tally-worker: Kafka consumers of tally.events (ledger decider, transfer
 * saga, outbox relay, projector, webhooks). Settings come from one table; SIGTERM/SIGINT
 * finish the batch in hand, commit, leave the consumer groups and exit 0.
 */
#include "worker.h"
#include "admin.h"
#include "tally/config.h"
#include "tally/log.h"

#include <malloc.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

static const tly_config_def_t settings[] = {
    {"pg-dsn", "TALLY_PG_DSN", TLY_CONFIG_STRING, NULL, 0, 0, offsetof(tly_worker_config_t, pg_dsn),
     "PostgreSQL connection string"},
    {"kafka-brokers", "TALLY_KAFKA_BROKERS", TLY_CONFIG_STRING, "127.0.0.1:9092", 0, 0, offsetof(tly_worker_config_t, brokers),
     "Kafka bootstrap servers"},
    {"kafka-topic", "TALLY_KAFKA_TOPIC", TLY_CONFIG_STRING, "tally.events", 0, 0, offsetof(tly_worker_config_t, topic),
     "the event topic"},
    {"roles", "TALLY_WORKER_ROLES", TLY_CONFIG_STRING, "decider,saga,projector,webhooks,retention", 0, 0,
     offsetof(tly_worker_config_t, roles),
     "comma-separated roles to run: decider, saga (transfer saga and its deadlines), projector, webhooks (records and "
     "sends webhook deliveries), retention (deletes old dedup and idempotency rows); decider and saga run the outbox "
     "relay"},
    {"log-level", "TALLY_LOG_LEVEL", TLY_CONFIG_STRING, "info", 0, 0, offsetof(tly_worker_config_t, log_level),
     "debug, info, warn or error"},
    {"batch-size", "TALLY_WORKER_BATCH_SIZE", TLY_CONFIG_INT, "2000", 1, 10000, offsetof(tly_worker_config_t, batch_size),
     "most events applied in one transaction"},
    {"batch-wait-ms", "TALLY_WORKER_BATCH_WAIT_MS", TLY_CONFIG_INT, "0", 0, 1000, offsetof(tly_worker_config_t, batch_wait_ms),
     "how long to wait for more events once a batch's first is in (0: take only what is already fetched)"},
    {"projector-consumers", "TALLY_WORKER_PROJECTOR_CONSUMERS", TLY_CONFIG_INT, "2", 1, TLY_PROJECTOR_CONSUMERS_MAX,
     offsetof(tly_worker_config_t, projector_consumers),
     "consumers of the projector's group in this process, each with its own thread and connection"},
    {"host", "TALLY_HTTP_HOST", TLY_CONFIG_STRING, "127.0.0.1", 0, 0, offsetof(tly_worker_config_t, admin_host),
     "address to listen on (the admin endpoint)", "admin-host"},
    {"admin-port", "TALLY_ADMIN_PORT", TLY_CONFIG_INT, "9183", 0, 65535, offsetof(tly_worker_config_t, admin_port),
     "port of /metrics, /healthz and /readyz (0: none)"},
    {"consumer-stall-s", "TALLY_CONSUMER_STALL_S", TLY_CONFIG_INT, "30", 1, 86400, offsetof(tly_worker_config_t, consumer_stall_s),
     "a partition with lag whose position has not moved this long makes /readyz answer 503 (logged once, and once when it "
     "moves again)"},
    {"max-event-tries", "TALLY_WORKER_MAX_EVENT_TRIES", TLY_CONFIG_INT, "5", 1, 100, offsetof(tly_worker_config_t, max_event_tries),
     "failures of one event alone before it is parked in dead_letters"},
    {"saga-step-timeout-ms", "TALLY_SAGA_STEP_TIMEOUT_MS", TLY_CONFIG_INT, "10000", 100, 3600000,
     offsetof(tly_worker_config_t, saga_step_timeout_ms),
     "a transfer step without an outcome this long is sent again (same event id: applied once)"},
    {"saga-stuck-ms", "TALLY_SAGA_STUCK_MS", TLY_CONFIG_INT, "300000", 1000, 604800000,
     offsetof(tly_worker_config_t, saga_stuck_ms),
     "a transfer unfinished this long after it started is reported stuck (transfer_sagas.stuck_at)"},
    {"webhook-allow-private", "TALLY_WEBHOOK_ALLOW_PRIVATE", TLY_CONFIG_BOOL, "false", 0, 0,
     offsetof(tly_worker_config_t, webhook_allow_private),
     "send webhooks to loopback, private and link-local addresses and over plain http (tests and local stacks only)"},
    {"webhook-timeout-ms", "TALLY_WEBHOOK_TIMEOUT_MS", TLY_CONFIG_INT, "15000", 100, 60000,
     offsetof(tly_worker_config_t, webhook_timeout_ms), "a webhook attempt without a complete answer this long fails"},
    {"webhook-time-scale", "TALLY_WEBHOOK_TIME_SCALE", TLY_CONFIG_INT, "1", 1, 100000000,
     offsetof(tly_worker_config_t, webhook_time_scale),
     "divides the webhook retry schedule, the attempt lease margin and the 5-day disable window (tests simulate days "
     "in seconds); 1 in production"},
    {"webhook-endpoint-concurrency", "TALLY_WEBHOOK_ENDPOINT_CONCURRENCY", TLY_CONFIG_INT, "4", 1, 256,
     offsetof(tly_worker_config_t, webhook_per_endpoint), "webhook attempts in flight per endpoint, per worker"},
    {"webhook-max-in-flight", "TALLY_WEBHOOK_MAX_IN_FLIGHT", TLY_CONFIG_INT, "256", 1, 4096,
     offsetof(tly_worker_config_t, webhook_max_in_flight), "webhook attempts in flight per worker"},
    {"retention-interval-ms", "TALLY_RETENTION_INTERVAL_MS", TLY_CONFIG_INT, "60000", 100, 86400000,
     offsetof(tly_worker_config_t, retention_interval_ms), "time between two retention passes"},
    {"dedup-retention-s", "TALLY_DEDUP_RETENTION_S", TLY_CONFIG_INT, "604800", 1, 315360000,
     offsetof(tly_worker_config_t, dedup_retention_s),
     "consumer_dedup rows applied longer ago than this are deleted (keep it well above 24 h: a retried request may "
     "come back within its Idempotency-Key window)"},
    {"command-retention-s", "TALLY_COMMAND_RETENTION_S", TLY_CONFIG_INT, "604800", 1, 315360000,
     offsetof(tly_worker_config_t, command_retention_s),
     "command_requests rows whose 24 h idempotency window ended longer ago than this are deleted, once their job is "
     "projected"},
};
#define NSETTINGS (sizeof(settings) / sizeof(settings[0]))

int
main(int argc, char **argv)
{
    tly_worker_config_t cfg;
    char err[512];
    unsigned roles = 0;
    tly_log_level_t level;
    atomic_bool stop = false;
    int sig = 0, ret = 1;
    memset(&cfg, 0, sizeof(cfg));
    /*
     * A dozen threads (consumers, relay, timers, sender, librdkafka's own)
     * each got a glibc arena of their own, and batches of thousands of
     * messages left each arena's high-water mark resident: 166 MB under load.
     * Two arenas hold the same work in far less (bench/README.md, RSS).
     */
    mallopt(M_ARENA_MAX, 2);
    int r =
        tly_config_load(settings, NSETTINGS, &cfg, argc, argv, "usage: tally-worker [--name=value ...]", stdout, err, sizeof(err));
    if (r != 0) {
        if (r < 0)
            fprintf(stderr, "tally-worker: %s\n", err);
        ret = r > 0 ? 0 : 2;
        goto cleanup;
    }
    if (!tly_log_level_parse(cfg.log_level, &level)) {
        fprintf(stderr, "tally-worker: invalid value for log-level: \"%s\"\n", cfg.log_level);
        ret = 2;
        goto cleanup;
    }
    if (tly_worker_parse_roles(cfg.roles, &roles, err, sizeof(err)) != 0) {
        fprintf(stderr, "tally-worker: %s\n", err);
        ret = 2;
        goto cleanup;
    }
    tly_log_init("worker", level);

    /* Block the signals before any thread exists (ours and librdkafka's) so that only sigwait sees them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    /* not fatal: the worker's work does not need it (and extra local workers share the default port) */
    tly_worker_admin_t *admin = tly_worker_admin_start(cfg.admin_host, (int)cfg.admin_port, cfg.pg_dsn, cfg.brokers, cfg.roles,
                                                       (int)cfg.consumer_stall_s, err, sizeof(err));
    if (admin == NULL) {
        tly_log(TLY_LOG_ERROR, "admin endpoint unavailable, running without it", "error", err, NULL);
        /* without the endpoint: still the progress watch and its log lines */
        admin = tly_worker_admin_start(NULL, 0, NULL, NULL, NULL, (int)cfg.consumer_stall_s, err, sizeof(err));
    }
    tly_worker_t *w = tly_worker_start(&cfg, roles, &stop, err, sizeof(err));
    if (w == NULL) {
        tly_log(TLY_LOG_ERROR, "could not start", "error", err, NULL);
        goto cleanup;
    }
    tly_log(TLY_LOG_INFO, "started", "roles", cfg.roles, "topic", cfg.topic, NULL);
    sigwait(&set, &sig);
    tly_log(TLY_LOG_INFO, "stopping", "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT", NULL);
    atomic_store(&stop, true);
    ret = tly_worker_join(w) == 0 ? 0 : 1;
    tly_worker_admin_stop(admin);
    tly_log(TLY_LOG_INFO, "stopped", NULL);
cleanup:
    tly_config_free(settings, NSETTINGS, &cfg);
    return ret;
}
