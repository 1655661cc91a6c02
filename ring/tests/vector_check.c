/*
 * vector_check.c - run the shared protocol vectors through the C library.
 *
 * Messages (tests/vectors/messages.json, fed by tests/ring/test_ring_vectors.py)
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
 *
 * Layout 5 (tests/vectors/layout5.json, read here; `make ring-check` runs it):
 *
 * usage: vector_check --layout FILE.json
 *   plans:           cxl_layout_plan() gives every segment and region_size; the
 *                    geometry maps every channel to its group and sections; the
 *                    header the library formats is header_hex byte for byte, and
 *                    cxl_header_read() accepts it and recovers the geometry
 *   invalid_plans:   cxl_layout_plan() returns 0
 *   invalid_headers: cxl_header_read() refuses each: "not_formatted" as an
 *                    unformatted region, every other as a layout mismatch whose
 *                    message names the field (a header cut short reaches C as a
 *                    page whose tail is zero: any mismatch will do)
 *   prints one line per failure and a summary; exits 1 on any failure.
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

/* ---- A small JSON reader: enough for the vectors (objects, arrays, integers, strings) -- */

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct jval {
    enum jtype type;
    double num;                         /* J_NUM, J_BOOL */
    uint64_t u64;                       /* J_NUM: the exact integer */
    char *str;                          /* J_STR; an object member's key */
    struct jval *kids;                  /* J_ARR, J_OBJ: elements, or members */
    size_t n;
    char *key;                          /* set on the members of an object */
};

static const char *jp;

static void jws(void)
{
    while (*jp == ' ' || *jp == '\n' || *jp == '\r' || *jp == '\t')
        jp++;
}

static int jparse(struct jval *v);

static char *jstring(void)
{
    size_t cap = 16, n = 0;
    char *out = malloc(cap);

    jp++;                               /* the opening quote */
    while (*jp && *jp != '"') {
        char ch = *jp++;

        if (ch == '\\') {
            ch = *jp++;
            if (ch == 'n') ch = '\n';
            else if (ch == 't') ch = '\t';
            else if (ch == 'u') { jp += 4; ch = '?'; }   /* not in the vectors' strings */
        }
        if (n + 2 > cap)
            out = realloc(out, cap *= 2);
        out[n++] = ch;
    }
    if (*jp == '"')
        jp++;
    out[n] = '\0';
    return out;
}

static int jlist(struct jval *v, char close, int members)
{
    size_t cap = 8;

    v->kids = calloc(cap, sizeof(*v->kids));
    jp++;
    jws();
    if (*jp == close) {
        jp++;
        return 0;
    }
    for (;;) {
        char *key = NULL;

        jws();
        if (members) {
            if (*jp != '"')
                return -1;
            key = jstring();
            jws();
            if (*jp++ != ':')
                return -1;
        }
        if (v->n == cap) {
            v->kids = realloc(v->kids, (cap *= 2) * sizeof(*v->kids));
            memset(v->kids + v->n, 0, (cap - v->n) * sizeof(*v->kids));
        }
        if (jparse(&v->kids[v->n]) < 0)
            return -1;
        v->kids[v->n++].key = key;
        jws();
        if (*jp == ',') {
            jp++;
            continue;
        }
        if (*jp++ != close)
            return -1;
        return 0;
    }
}

static int jparse(struct jval *v)
{
    memset(v, 0, sizeof(*v));
    jws();
    switch (*jp) {
    case '{': v->type = J_OBJ; return jlist(v, '}', 1);
    case '[': v->type = J_ARR; return jlist(v, ']', 0);
    case '"': v->type = J_STR; v->str = jstring(); return 0;
    case 't': v->type = J_BOOL; v->num = 1; jp += 4; return 0;
    case 'f': v->type = J_BOOL; jp += 5; return 0;
    case 'n': v->type = J_NULL; jp += 4; return 0;
    default: {
        char *end;

        v->type = J_NUM;
        if (*jp != '-')
            v->u64 = strtoull(jp, &end, 10);
        v->num = strtod(jp, &end);
        if (end == jp)
            return -1;
        jp = end;
        return 0;
    }
    }
}

static void jfree(struct jval *v)
{
    size_t i;

    for (i = 0; i < v->n; i++) {
        jfree(&v->kids[i]);
        free(v->kids[i].key);
    }
    free(v->kids);
    free(v->str);
}

static const struct jval *jget(const struct jval *obj, const char *key)
{
    size_t i;

    for (i = 0; obj && obj->type == J_OBJ && i < obj->n; i++)
        if (!strcmp(obj->kids[i].key, key))
            return &obj->kids[i];
    return NULL;
}

static uint64_t jnum(const struct jval *obj, const char *key)
{
    const struct jval *v = jget(obj, key);

    return v && v->type == J_NUM ? v->u64 : 0;
}

static const char *jstr(const struct jval *obj, const char *key)
{
    const struct jval *v = jget(obj, key);

    return v && v->type == J_STR ? v->str : "";
}

/* ---- Layout 5 ------------------------------------------------------------------ */

static int failures, checks;

#define CHECK(cond, ...) do { \
        checks++; \
        if (!(cond)) { failures++; printf("FAIL "); printf(__VA_ARGS__); printf("\n"); } \
    } while (0)

/* A case's groups, ring sizes and alignment; returns the group count. */
static uint32_t plan_input(const struct jval *c, uint32_t *groups)
{
    const struct jval *g = jget(c, "groups");
    uint32_t n = 0;

    for (size_t i = 0; g && i < g->n && n < 64; i++)
        groups[n++] = (uint32_t)g->kids[i].u64;
    return n;
}

static void check_plan(const struct jval *c)
{
    const char *name = jstr(c, "name");
    const struct jval *segs = jget(c, "segments"), *chans = jget(c, "channels");
    static struct cxl_segment_plan out[CXL_MAX_SEGMENTS];
    static struct cxl_geometry geo, back;
    static struct cxl_shm_header hdr;
    static uint8_t want[CXL_HEADER_SIZE];
    uint32_t groups[64], ngroups = plan_input(c, groups), k;
    struct cxl_params p;
    uint64_t region;
    char why[512];
    size_t n;

    region = cxl_layout_plan(groups, ngroups, (uint32_t)jnum(c, "req_ring_size"),
                             (uint32_t)jnum(c, "resp_ring_size"),
                             (uint32_t)jnum(c, "segment_align"), out);
    CHECK(region == jnum(c, "region_size"), "plan %s: region_size %llu, want %llu", name,
          (unsigned long long)region, (unsigned long long)jnum(c, "region_size"));
    CHECK(segs && segs->n == 1 + 2 * ngroups, "plan %s: segment count", name);
    for (k = 0; segs && k < segs->n && k < 1 + 2 * ngroups; k++) {
        const struct jval *e = &segs->kids[k];

        CHECK(out[k].offset == jnum(e, "offset") && out[k].size == jnum(e, "size") &&
              out[k].span == jnum(e, "span") && out[k].kind == jnum(e, "kind") &&
              out[k].group == jnum(e, "group") &&
              out[k].first_channel == jnum(e, "first_channel") &&
              out[k].channel_count == jnum(e, "channel_count"),
              "plan %s: segment %u (%s) is offset %llu size %llu span %llu kind %u group %u "
              "channels %u+%u", name, k, jstr(e, "name"), (unsigned long long)out[k].offset,
              (unsigned long long)out[k].size, (unsigned long long)out[k].span, out[k].kind,
              out[k].group, out[k].first_channel, out[k].channel_count);
    }

    /* The geometry a server formats with, and the header it writes. */
    memset(&p, 0, sizeof(p));
    p.req_ring_size = (uint32_t)jnum(c, "req_ring_size");
    p.resp_ring_size = (uint32_t)jnum(c, "resp_ring_size");
    p.segment_align = (uint32_t)jnum(c, "segment_align");
    p.max_value_size = (uint32_t)jnum(c, "max_value_size");
    p.max_msg_size = (uint32_t)jnum(c, "max_msg_size");
    p.heartbeat_interval_ms = (uint32_t)jnum(c, "heartbeat_interval_ms");
    p.client_lease_ms = (uint32_t)jnum(c, "client_lease_ms");
    p.group_count = ngroups;
    memcpy(p.groups, groups, ngroups * sizeof(groups[0]));
    if (cxl_geometry_from_params(&p, &geo, why, sizeof(why)) < 0) {
        CHECK(0, "plan %s: cxl_geometry_from_params: %s", name, why);
        return;
    }
    CHECK(geo.max_msg_size == jnum(c, "max_msg_size"), "plan %s: max_msg_size %u", name,
          geo.max_msg_size);
    CHECK(chans && chans->n == geo.channel_count, "plan %s: channel count %u", name,
          geo.channel_count);
    for (n = 0; chans && n < chans->n && n < geo.channel_count; n++) {
        const struct jval *ch = &chans->kids[n];
        uint32_t c32 = (uint32_t)n;

        CHECK(ch->n == 3 && geo.chan_group[c32] == ch->kids[0].u64 &&
              cxl_client_section_off(&geo, c32) == ch->kids[1].u64 &&
              cxl_server_section_off(&geo, c32) == ch->kids[2].u64,
              "plan %s: channel %u is group %u, client section at %llu, server section at "
              "%llu", name, c32, geo.chan_group[c32],
              (unsigned long long)cxl_client_section_off(&geo, c32),
              (unsigned long long)cxl_server_section_off(&geo, c32));
    }
    memset(&hdr, 0, sizeof(hdr));
    cxl_header_write_geometry(&hdr, &geo);
    cxl_header_publish_magic(&hdr);
    memset(want, 0, sizeof(want));
    n = unhex(jstr(c, "header_hex"), want, sizeof(want));
    CHECK(n > 0 && !memcmp(&hdr, want, sizeof(want)), "plan %s: the header the library "
          "formats differs from header_hex", name);
    CHECK(cxl_header_read((const struct cxl_shm_header *)(const void *)want, 0, &back, why,
                          sizeof(why)) == 0 && cxl_geometry_equal(&back, &geo) &&
          back.region_size == region && back.segment_count == 1 + 2 * ngroups,
          "plan %s: cxl_header_read refuses header_hex or reads another geometry: %s", name,
          why);
}

static void check_invalid_plan(const struct jval *c)
{
    static struct cxl_segment_plan out[CXL_MAX_SEGMENTS + 8];
    uint32_t groups[64], ngroups = plan_input(c, groups);
    uint64_t region = cxl_layout_plan(groups, ngroups, (uint32_t)jnum(c, "req_ring_size"),
                                      (uint32_t)jnum(c, "resp_ring_size"),
                                      (uint32_t)jnum(c, "segment_align"), out);

    CHECK(region == 0, "invalid plan %s (%s): cxl_layout_plan() placed it (%llu bytes)",
          jstr(c, "name"), jstr(c, "error"), (unsigned long long)region);
}

static void check_invalid_header(const struct jval *c)
{
    static uint8_t page[CXL_HEADER_SIZE];
    static struct cxl_geometry geo;
    const char *name = jstr(c, "name"), *error = jstr(c, "error");
    char why[512] = "";
    int rc;

    memset(page, 0, sizeof(page));
    unhex(jstr(c, "hex"), page, sizeof(page));
    rc = cxl_header_read((const struct cxl_shm_header *)(const void *)page, 0, &geo, why,
                         sizeof(why));
    if (!strcmp(error, "not_formatted"))
        CHECK(rc == 1, "invalid header %s: want not formatted, got %d (%s)", name, rc, why);
    else if (!strcmp(error, "truncated"))
        CHECK(rc == -1, "invalid header %s: want a layout mismatch, got %d", name, rc);
    else
        CHECK(rc == -1 && strstr(why, error), "invalid header %s: want a layout mismatch "
              "naming %s, got %d (%s)", name, error, rc, why);
}

static int check_layout(const char *path)
{
    const struct jval *list;
    struct jval root;
    char *text;
    long size;
    FILE *f = fopen(path, "r");
    size_t i;

    if (!f) {
        fprintf(stderr, "vector_check: cannot open %s\n", path);
        return 2;
    }
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    rewind(f);
    text = calloc(1, (size_t)size + 1);
    if (fread(text, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "vector_check: cannot read %s\n", path);
        return 2;
    }
    fclose(f);
    jp = text;
    if (jparse(&root) < 0 || root.type != J_OBJ) {
        fprintf(stderr, "vector_check: %s is not the JSON this reads\n", path);
        return 2;
    }
    if ((list = jget(&root, "plans")))
        for (i = 0; i < list->n; i++)
            check_plan(&list->kids[i]);
    if ((list = jget(&root, "invalid_plans")))
        for (i = 0; i < list->n; i++)
            check_invalid_plan(&list->kids[i]);
    if ((list = jget(&root, "invalid_headers")))
        for (i = 0; i < list->n; i++)
            check_invalid_header(&list->kids[i]);
    printf("%s: %d checks, %d failed\n", path, checks, failures);
    jfree(&root);
    free(text);
    return failures || !checks ? 1 : 0;
}

int main(int argc, char **argv)
{
    static char line[1 << 20], name[256];
    static uint8_t bytes[1 << 19];
    static struct cxl_req req;
    uint32_t max_value, max_msg;
    char why[160];

    if (argc == 3 && !strcmp(argv[1], "--layout"))
        return check_layout(argv[2]);
    if (argc != 3) {
        fprintf(stderr, "usage: %s MAX_VALUE MAX_MSG < cases\n"
                "       %s --layout tests/vectors/layout5.json\n", argv[0], argv[0]);
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
