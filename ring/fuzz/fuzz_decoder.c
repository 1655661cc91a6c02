/*
 * fuzz_decoder.c - libFuzzer harness for the server's view of a request ring:
 * the framing check (cxl_frame_check) and the request decoder (cxl_req_decode).
 *
 * The input is a published request stream: its first 8 bytes are a claimed
 * head - tail (the client's word, so anything), the rest the ring's bytes.
 * The harness consumes it the way driver/channel.c does: copy a header once,
 * check the framing, copy the message once, decode the copy, skip or stop.
 * ASan/UBSan (make fuzz builds with both) catch any read outside the ring or
 * the private copy; the asserts check the decoder's promises.
 *
 * The same input also edits a formatted layout 5 header (a client's view of a
 * hostile server: every 3 bytes set one byte of the geometry or the segment
 * table), and cxl_header_read() must either refuse it or return a geometry
 * whose segments and channels all lie inside region_size.
 *
 *   make fuzz FUZZ_SECONDS=600          # longer runs, corpus in build/fuzz-corpus
 *   build/fuzz-decoder -runs=20000      # what tests/ring/test_ring_fuzz.py runs
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cxl_ring/ring.h"

#define RING_SIZE   8192u              /* power of two, like a real (small) ring */
#define MAX_VALUE   1024u
#define MAX_MSG     (MAX_VALUE + 2048u)

static uint8_t ring_data[RING_SIZE];
static uint8_t private_copy[MAX_MSG + CXL_MSG_ALIGN];
static struct cxl_req req;
static struct cxl_shm_header formatted, edited;
static int formatted_once;

/* A header as a server formats it: three channel groups, small rings. */
static void format_header(void)
{
    struct cxl_params p = { .req_ring_size = 8192, .resp_ring_size = 16384,
                            .max_value_size = 1024, .max_msg_size = 4096, .group_count = 3,
                            .groups = { 2, 1, 3 } };
    struct cxl_geometry geo;

    assert(cxl_geometry_from_params(&p, &geo, NULL, 0) == 0);
    cxl_header_write_geometry(&formatted, &geo);
    cxl_header_publish_magic(&formatted);
    formatted_once = 1;
}

static void fuzz_header(const uint8_t *data, size_t size)
{
    uint32_t span_end = CXL_SEGMENT_TABLE_OFF + 7 * CXL_SEGMENT_ENTRY, i, c;
    struct cxl_geometry geo;
    uint8_t *b = (uint8_t *)&edited;
    char why[512];

    if (!formatted_once)
        format_header();
    edited = formatted;
    for (i = 0; i + 3 <= size && i < 3 * 16; i += 3)
        b[(data[i] | (uint32_t)data[i + 1] << 8) % span_end] = data[i + 2];
    if (cxl_header_read(&edited, 0, &geo, why, sizeof(why)) != 0)
        return;
    assert(geo.channel_count >= 1 && geo.channel_count <= CXL_MAX_CHANNELS);
    assert(geo.segment_count == 1 + 2 * geo.group_count);
    for (i = 0; i < geo.segment_count; i++)
        assert(geo.seg[i].offset + geo.seg[i].span <= geo.region_size &&
               geo.seg[i].size <= geo.seg[i].span);
    for (c = 0; c < geo.channel_count; c++) {
        const struct cxl_segment_plan *cs = &geo.seg[cxl_client_segment(geo.chan_group[c])];
        const struct cxl_segment_plan *ss = &geo.seg[cxl_server_segment(geo.chan_group[c])];

        assert(cxl_client_section_off(&geo, c) >= cs->offset &&
               cxl_client_section_off(&geo, c) + geo.client_section_size <=
               cs->offset + cs->size);
        assert(cxl_server_section_off(&geo, c) >= ss->offset &&
               cxl_server_section_off(&geo, c) + geo.server_section_size <=
               ss->offset + ss->size);
    }
}

static void check_decoded(const uint8_t *msg, uint32_t len, int st)
{
    uint32_t i;

    assert(st == CXL_ST_OK || st == CXL_ST_BAD_REQUEST || st == CXL_ST_UNKNOWN_OP ||
           st == CXL_ST_TOO_LARGE);
    if (st != CXL_ST_OK)
        return;
    assert(req.op >= CXL_OP_GET && req.op <= CXL_OP_PING);
    for (i = 0; i < req.argc; i++) {
        /* every argument lies inside the message, and within max_value */
        assert(req.argv[i] >= msg + CXL_MSG_HDR_SIZE);
        assert(req.argv[i] + req.argl[i] <= msg + len);
        assert(req.argl[i] <= MAX_VALUE);
    }
    if (req.flags & CXL_FLAG_TTL)
        assert(req.op == CXL_OP_SET && req.ttl_ms > 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cxl_ring ring;
    volatile uint64_t head_word = 0, tail_word = 0;
    uint64_t used, tail = 0, head;
    char why[160];
    unsigned steps = 0;

    fuzz_header(data, size);
    if (size < 8)
        return 0;
    memcpy((void *)&head_word, data, 8);
    memset(ring_data, 0, sizeof(ring_data));
    memcpy(ring_data, data + 8, size - 8 < RING_SIZE ? size - 8 : RING_SIZE);

    ring.data = ring_data;
    ring.size = RING_SIZE;
    ring.mask = RING_SIZE - 1;
    ring.shm_head = &head_word;
    ring.shm_tail = &tail_word;

    head = cxl_load_acquire64(ring.shm_head);       /* C1, once */
    while ((used = head - tail) != 0 && steps++ < 4096) {
        struct cxl_msg_hdr hdr;
        const char *bad = NULL;
        int frame;

        if (used > ring.size || used < CXL_MSG_HDR_SIZE) {
            frame = cxl_frame_check(used, ring.size, 0, MAX_MSG, &bad);
            assert(frame == CXL_FRAME_QUARANTINE && bad);
            break;
        }
        cxl_ring_copy_out(&ring, tail, &hdr, sizeof(hdr));
        frame = cxl_frame_check(used, ring.size, hdr.len, MAX_MSG, &bad);
        if (frame == CXL_FRAME_QUARANTINE) {
            assert(bad);
            break;
        }
        assert(cxl_align8(hdr.len) <= used && hdr.len >= CXL_MSG_HDR_SIZE);
        if (frame == CXL_FRAME_OK) {
            int st;

            assert(hdr.len <= MAX_MSG);
            cxl_ring_copy_out(&ring, tail, private_copy, hdr.len);
            st = cxl_req_decode(private_copy, hdr.len, MAX_VALUE, &req, why, sizeof(why));
            check_decoded(private_copy, hdr.len, st);
        }
        tail += cxl_align8(hdr.len);
        cxl_store_release64(ring.shm_tail, tail);   /* C2 */
    }

    /* The decoder alone, on the raw input as one message (its own length checks). */
    if (size - 8 <= MAX_MSG) {
        int st = cxl_req_decode(data + 8, (uint32_t)(size - 8), MAX_VALUE, &req, why,
                                sizeof(why));
        check_decoded(data + 8, (uint32_t)(size - 8), st);
    }
    return 0;
}
