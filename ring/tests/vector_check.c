/*
 * vector_check.c - run the shared protocol vectors (tests/vectors/messages.json)
 * through the server's request path: cxl_frame_check, then cxl_req_decode.
 *
 * usage: vector_check MAX_VALUE MAX_MSG < cases
 *   each input line:  NAME HEX [GEN]  (HEX = the bytes the client published; "-" = none;
 *                                      GEN = the session_gen of the session serving it)
 *   each output line: NAME QUARANTINE
 *                     NAME STALE                  (GEN given, the id carries another one)
 *                     NAME STATUS                 (an error status, message skipped)
 *                     NAME OK OP FLAGS ARGC ID TTL xARGHEX,xARGHEX,... (- = none)
 * tests/ring/test_ring_vectors.py builds this with cc and compares with the JSON.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cxl_ring/ring.h"

static const char *status_name(int st)
{
    switch (st) {
    case CXL_ST_OK:          return "OK";
    case CXL_ST_BAD_REQUEST: return "BAD_REQUEST";
    case CXL_ST_UNKNOWN_OP:  return "UNKNOWN_OP";
    case CXL_ST_TOO_LARGE:   return "TOO_LARGE";
    default:                 return "?";
    }
}

static size_t unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    unsigned v;

    if (!strcmp(hex, "-"))
        return 0;
    while (hex[0] && hex[1] && n < cap && sscanf(hex, "%2x", &v) == 1) {
        out[n++] = (uint8_t)v;
        hex += 2;
    }
    return n;
}

int main(int argc, char **argv)
{
    static char line[1 << 20], name[256];
    static uint8_t bytes[1 << 19];
    static struct cxl_req req;
    uint32_t max_value, max_msg;
    char why[160];

    if (argc != 3) {
        fprintf(stderr, "usage: %s MAX_VALUE MAX_MSG < cases\n", argv[0]);
        return 2;
    }
    max_value = (uint32_t)strtoul(argv[1], NULL, 0);
    max_msg = (uint32_t)strtoul(argv[2], NULL, 0);
    while (fgets(line, sizeof(line), stdin)) {
        char *hex = strchr(line, ' '), *gen_arg;
        struct cxl_msg_hdr hdr;
        const char *bad = NULL;
        size_t used;
        int frame, st;
        uint32_t i;

        if (!hex)
            continue;
        *hex++ = '\0';
        hex[strcspn(hex, "\r\n")] = '\0';
        gen_arg = strchr(hex, ' ');
        if (gen_arg)
            *gen_arg++ = '\0';
        strncpy(name, line, sizeof(name) - 1);
        name[sizeof(name) - 1] = '\0';
        used = unhex(hex, bytes, sizeof(bytes));
        /* the ring's published bytes: a header copy first, as the server does */
        memset(&hdr, 0, sizeof(hdr));
        if (used >= sizeof(hdr))
            memcpy(&hdr, bytes, sizeof(hdr));
        frame = cxl_frame_check(used, 1u << 20, used >= sizeof(hdr) ? hdr.len : 0, max_msg,
                                &bad);
        if (used < sizeof(hdr))
            frame = CXL_FRAME_QUARANTINE;
        if (frame == CXL_FRAME_QUARANTINE) {
            printf("%s QUARANTINE\n", name);
            continue;
        }
        /* The driver's order (driver/channel.c): framing, then the session, then the rest. */
        if (gen_arg && cxl_id_gen(hdr.id) != (uint32_t)strtoul(gen_arg, NULL, 0)) {
            printf("%s STALE\n", name);
            continue;
        }
        if (frame == CXL_FRAME_SKIP) {
            printf("%s TOO_LARGE\n", name);
            continue;
        }
        st = cxl_req_decode(bytes, hdr.len, max_value, &req, why, sizeof(why));
        if (st != CXL_ST_OK) {
            printf("%s %s\n", name, status_name(st));
            continue;
        }
        printf("%s OK %u %u %u %llu %llu ", name, req.op, req.flags, req.argc,
               (unsigned long long)req.id, (unsigned long long)req.ttl_ms);
        for (i = 0; i < req.argc; i++) {
            uint32_t j;

            printf(i ? ",x" : "x");     /* x marks an argument, even an empty one */
            for (j = 0; j < req.argl[i]; j++)
                printf("%02x", req.argv[i][j]);
        }
        printf(i ? "\n" : "-\n");
    }
    return 0;
}
