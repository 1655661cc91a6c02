/*
 * transport_v5.c - cxl-ring-bench over layout version 5: one session (one
 * claimed channel) per thread, through the client library in
 * ring/src/client.c (claim, heartbeat thread, push, pop with validation,
 * liveness checks, release). The region is one file (security off) or a
 * directory of segment files (security secdsm); either way a thread claims
 * only a channel whose client segment this process mapped writable.
 */
#include "bench.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

struct bench_conn {
    struct cxl_session session;
    uint8_t *scratch;               /* one encoded request */
};

static struct cxl_client client;
static uint32_t claim_timeout_ms;
static uint32_t scratch_size;
static uint32_t channels[CXL_MAX_CHANNELS];   /* the claimable ones */
static uint32_t nchannels;

static int v5_open(const struct bench_opts *o, char *err, size_t errlen)
{
    int rc = cxl_client_open(&client, o->path, o->map_size, err, errlen);

    if (rc)
        return bench_exit_for(rc);
    cxl_client_set_doorbell(&client, o->doorbell);
    if (o->value_size > client.geo.max_value_size) {
        snprintf(err, errlen, "--value-size %u exceeds the server's max_value_size %u",
                 o->value_size, client.geo.max_value_size);
        cxl_client_close(&client);
        return EXIT_USAGE;
    }
    nchannels = cxl_client_channels(&client, channels, CXL_MAX_CHANNELS);
    if (!nchannels) {
        snprintf(err, errlen, "%s: no channel can be claimed from here: no client segment is "
                 "mapped writable (give the bench its group's client-<g> read-write)",
                 o->path);
        cxl_client_close(&client);
        return EXIT_NO_REGION;
    }
    rc = cxl_client_start_heartbeat(&client, err, errlen);
    if (rc) {
        cxl_client_close(&client);
        return bench_exit_for(rc);
    }
    claim_timeout_ms = o->claim_timeout_ms;
    scratch_size = (uint32_t)cxl_align8(CXL_MSG_HDR_SIZE + 2 * CXL_ARG_LEN_SIZE +
                                        BENCH_KEY_LEN + o->value_size);
    return EXIT_OK_BENCH;
}

static void v5_close(void)
{
    cxl_client_close(&client);
}

static uint32_t v5_lanes(void)
{
    return nchannels;
}

static int v5_attach(uint32_t index, struct bench_conn **out, char *err, size_t errlen)
{
    struct bench_conn *c = calloc(1, sizeof(*c));
    int rc;

    if (!c || !(c->scratch = calloc(1, scratch_size))) {
        free(c);
        snprintf(err, errlen, "out of memory");
        return CXL_E_OPEN;
    }
    rc = cxl_session_claim(&client, &c->session, channels[index % nchannels],
                           claim_timeout_ms);
    if (rc) {
        snprintf(err, errlen, "%s", c->session.err);
        free(c->scratch);
        free(c);
        return rc;
    }
    *out = c;
    return CXL_OK;
}

static void v5_detach(struct bench_conn *c)
{
    cxl_session_release(&c->session);
    free(c->scratch);
    free(c);
}

static int v5_push(struct bench_conn *c, int op, uint64_t id, const uint8_t *key,
                   uint32_t key_len, const uint8_t *val, uint32_t val_len)
{
    const uint8_t *argv[2] = { key, val };
    uint32_t argl[2] = { key_len, val_len };
    uint32_t len;

    /* The id carries the session's generation (section 4.3); the bench counts in the
     * low half, which a run of under 2^32 requests per thread never wraps. */
    id = cxl_session_id(&c->session, (uint32_t)id);
    if (op == OP_GET)
        len = cxl_req_encode(c->scratch, CXL_OP_GET, 0, id, 0, 1, argv, argl);
    else
        len = cxl_req_encode(c->scratch, CXL_OP_SET, 0, id, 0, 2, argv, argl);
    return cxl_session_push(&c->session, c->scratch, len);
}

static void v5_flush(struct bench_conn *c)
{
    cxl_session_flush(&c->session);
}

static int v5_pop(struct bench_conn *c, struct bench_reply *r)
{
    struct cxl_resp resp;
    int rc = cxl_session_pop(&c->session, &resp);

    if (rc)
        return rc;
    if (resp.status != CXL_ST_PROTOCOL_ERROR && cxl_id_gen(resp.id) != c->session.gen) {
        snprintf(c->session.err, sizeof(c->session.err), "response id %#" PRIx64 " does not "
                 "carry this session's generation %u", resp.id, c->session.gen);
        return CXL_E_CORRUPT;
    }
    r->id = resp.id & CXL_ID_SEQ_MASK;  /* main.c compares the low half */
    r->has_id = 1;
    r->status = resp.status;
    r->value_len = resp.payload_len;
    r->text = resp.payload;
    r->text_len = resp.payload_len;
    return CXL_OK;
}

static void v5_pop_done(struct bench_conn *c)
{
    cxl_session_pop_done(&c->session);
}

static int v5_check(struct bench_conn *c)
{
    return cxl_session_check(&c->session);
}

static const char *v5_error(struct bench_conn *c)
{
    return c->session.err;
}

const struct transport transport_v5 = {
    .name = "v5",
    .open = v5_open,
    .close = v5_close,
    .lanes = v5_lanes,
    .attach = v5_attach,
    .detach = v5_detach,
    .push = v5_push,
    .flush = v5_flush,
    .pop = v5_pop,
    .pop_done = v5_pop_done,
    .check = v5_check,
    .error = v5_error,
};
