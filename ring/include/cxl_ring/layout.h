/*
 * layout.h - the byte layout of a cxl_ring region, layout version 5.
 *
 * This header is docs/ring-protocol.md in C. Every structure here lives in
 * shared memory and is written by exactly one peer: the header and the server
 * sections by the server, a client section by the client that owns that
 * channel. Sections are grouped by writer into segments (one per channel group
 * and side), each its own file or device, so that the hypervisor maps each
 * segment read-write, read-only or not at all into each peer (Sec-DSM).
 *
 * Fields are accessed only through barrier.h helpers (never plain loads or
 * stores), and the types below are named cxl_shm_* so that a pointer into
 * shared memory cannot be mistaken for a private copy.
 */
#ifndef CXL_RING_LAYOUT_H
#define CXL_RING_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

/* ---- Region ------------------------------------------------------------- */

#define CXL_MAGIC             "CXLDSMR"         /* 8 bytes with the NUL */
#define CXL_MAGIC_LEN         8
#define CXL_LAYOUT_VERSION    5u
#define CXL_PAGE_SIZE         4096u
#define CXL_HEADER_SIZE       CXL_PAGE_SIZE
#define CXL_CONTROL_SIZE      CXL_PAGE_SIZE      /* control page before each ring */
#define CXL_CACHELINE         64u

#define CXL_MAX_CHANNELS      256u
#define CXL_MAX_GROUPS        32u
#define CXL_MAX_SEGMENTS      (1u + 2u * CXL_MAX_GROUPS)
#define CXL_SEGMENT_TABLE_OFF 256u
#define CXL_SEGMENT_ENTRY     32u
#define CXL_GROUP_NONE        0xffffu       /* group of the header segment */
#define CXL_MIN_RING_SIZE     4096u
#define CXL_MAX_RING_SIZE     (1u << 30)

/* Defaults (docs/ring-protocol.md, section 2.1). */
#define CXL_DEFAULT_CHANNELS          8u
#define CXL_DEFAULT_RING_SIZE         (2u << 20)
#define CXL_DEFAULT_MAX_VALUE         (1u << 20)
#define CXL_MSG_SLACK                 (64u << 10) /* max_msg = max_value + slack */
#define CXL_DEFAULT_HEARTBEAT_MS      100u
#define CXL_DEFAULT_CLIENT_LEASE_MS   2000u
#define CXL_SERVER_DEAD_BEATS         10u         /* missed heartbeats = server gone */
#define CXL_SERVER_DEAD_MIN_MS        1000u
/* The lab's far-memory model (docs/ring-protocol.md 2.4): at most 1 ms per ring read. */
#define CXL_MAX_ACCESS_DELAY_NS       1000000u

enum cxl_server_state {
    CXL_SERVER_STOPPED  = 0,
    CXL_SERVER_STARTING = 1,
    CXL_SERVER_RUNNING  = 2,
    CXL_SERVER_STOPPING = 3,
};

/* How a client wakes a sleeping server (header notify_kind, section 8). Zero, as the
 * reserved bytes of older servers read, means the server polls. */
enum cxl_notify_kind {
    CXL_NOTIFY_NONE     = 0,                /* the server polls; never notify */
    CXL_NOTIFY_FUTEX    = 1,                /* one kernel: futex on the group's req_wake */
    CXL_NOTIFY_DOORBELL = 2,                /* between VMs: ring doorbell_peer/vector */
};

/* Client section resp_doorbell (section 8, N4): bit 32 says the low 32 bits are the value
 * (peer id << 16 | vector) the server writes to its doorbell to wake the blocked client. */
#define CXL_RESP_DOORBELL_SET  (1ULL << 32)

enum cxl_chan_state {
    CXL_CHAN_FREE        = 0,
    CXL_CHAN_ACTIVE      = 1,
    CXL_CHAN_QUARANTINED = 2,
};

/* Header section: offset 0, written by the server. */
struct cxl_shm_header {
    /* geometry: written while formatting, before magic (F1) */
    char     magic[CXL_MAGIC_LEN];      /*   0 */
    uint32_t version;                   /*   8 */
    uint32_t header_size;               /*  12 */
    uint32_t feature_flags;             /*  16 */
    uint32_t channel_count;             /*  20 */
    uint64_t region_size;               /*  24 */
    uint32_t group_count;               /*  32 */
    uint32_t segment_count;             /*  36: 1 + 2 * group_count */
    uint32_t segment_align;             /*  40: power of two >= 4096 */
    uint32_t reserved_g;                /*  44 */
    uint64_t client_section_size;       /*  48 */
    uint64_t server_section_size;       /*  56 */
    uint32_t req_ring_size;             /*  64 */
    uint32_t resp_ring_size;            /*  68 */
    uint32_t max_msg_size;              /*  72 */
    uint32_t max_value_size;            /*  76 */
    uint32_t heartbeat_interval_ms;     /*  80 */
    uint32_t client_lease_ms;           /*  84 */
    uint32_t access_delay_ns;           /*  88: the server writes it at each start (2.4) */
    uint8_t  reserved0[128 - 92];
    /* liveness: its own cache line */
    uint64_t server_epoch;              /* 128 */
    uint64_t server_heartbeat;          /* 136 */
    uint32_t server_state;              /* 144 */
    uint32_t server_pid;                /* 148 */
    uint32_t server_sleeping;           /* 152: the server may be blocked (section 8, N1) */
    uint32_t notify_kind;               /* 156: enum cxl_notify_kind */
    uint32_t doorbell_peer;             /* 160: the server's doorbell peer id */
    uint32_t doorbell_vector;           /* 164: the vector a client rings */
    uint8_t  reserved1[CXL_SEGMENT_TABLE_OFF - 168];
    /* geometry, written while formatting: one entry per segment */
    struct cxl_shm_segment {
        uint64_t offset;                /*  0: offset(k) in the region */
        uint64_t size;                  /*  8: bytes the layout uses */
        uint64_t span;                  /* 16: bytes reserved (a power of two) */
        uint8_t  kind;                  /* 24: enum cxl_segment_kind */
        uint8_t  reserved;              /* 25 */
        uint16_t group;                 /* 26: CXL_GROUP_NONE for the header */
        uint16_t first_channel;         /* 28 */
        uint16_t channel_count;         /* 30 */
    } segments[CXL_MAX_SEGMENTS];       /* 256 */
    uint8_t  reserved2[CXL_HEADER_SIZE - CXL_SEGMENT_TABLE_OFF
                       - CXL_MAX_SEGMENTS * CXL_SEGMENT_ENTRY];
};

enum cxl_segment_kind {
    CXL_SEG_HEADER = 1,                 /* written by the server */
    CXL_SEG_CLIENT = 2,                 /* written by the group's client */
    CXL_SEG_SERVER = 3,                 /* written by the server */
};

/* Control page of a client section, written by the channel's owner. */
struct cxl_shm_client_ctl {
    uint64_t claim_token;               /*   0 */
    uint64_t client_heartbeat;          /*   8 */
    uint32_t client_pid;                /*  16 */
    uint32_t resp_sleeping;             /*  20: the client may be blocked on resp_wake (N3) */
    uint32_t req_wake;                  /*  24: the group's wake word (first channel only) */
    uint32_t reserved_w;                /*  28: zero (an 8-byte CAS may update 24..31) */
    uint64_t resp_doorbell;             /*  32: how the server rings this client's doorbell
                                         *      (N4, notify_kind doorbell): CXL_RESP_DOORBELL_SET
                                         *      | peer << 16 | vector; 0 = it cannot */
    uint8_t  reserved0[64 - 40];
    uint64_t req_head;                  /*  64: request producer index */
    uint8_t  reserved1[128 - 72];
    uint64_t resp_tail;                 /* 128: response consumer index */
    uint8_t  reserved2[CXL_CONTROL_SIZE - 136];
};

/* Control page of a server section, written by the server. */
struct cxl_shm_server_ctl {
    uint64_t ack_token;                 /*   0 */
    uint64_t dead_token;                /*   8 */
    uint32_t chan_state;                /*  16 */
    uint32_t last_error;                /*  20 */
    uint32_t session_gen;               /*  24: generation of the session served (section 5) */
    uint32_t resp_wake;                 /*  28: bumped before the server wakes its client (N4) */
    uint8_t  reserved0[64 - 32];
    uint64_t req_tail;                  /*  64: request consumer index */
    uint8_t  reserved1[128 - 72];
    uint64_t resp_head;                 /* 128: response producer index */
    uint8_t  reserved2[CXL_CONTROL_SIZE - 136];
};

_Static_assert(sizeof(struct cxl_shm_header) == CXL_HEADER_SIZE, "header is one page");
_Static_assert(offsetof(struct cxl_shm_header, client_lease_ms) == 84, "header geometry");
_Static_assert(offsetof(struct cxl_shm_header, access_delay_ns) == 88, "header geometry");
_Static_assert(offsetof(struct cxl_shm_header, server_epoch) == 128, "liveness line");
_Static_assert(offsetof(struct cxl_shm_header, server_pid) == 148, "liveness line");
_Static_assert(offsetof(struct cxl_shm_header, group_count) == 32, "group count");
_Static_assert(offsetof(struct cxl_shm_header, segment_align) == 40, "segment alignment");
_Static_assert(offsetof(struct cxl_shm_header, server_sleeping) == 152, "notification line");
_Static_assert(offsetof(struct cxl_shm_header, doorbell_vector) == 164, "notification line");
_Static_assert(offsetof(struct cxl_shm_header, segments) == CXL_SEGMENT_TABLE_OFF, "segment table");
_Static_assert(sizeof(struct cxl_shm_segment) == CXL_SEGMENT_ENTRY, "segment entry");
_Static_assert(offsetof(struct cxl_shm_segment, kind) == 24, "segment kind");
_Static_assert(sizeof(struct cxl_shm_client_ctl) == CXL_CONTROL_SIZE, "client control page");
_Static_assert(offsetof(struct cxl_shm_client_ctl, req_head) == 64, "req_head line");
_Static_assert(offsetof(struct cxl_shm_client_ctl, resp_tail) == 128, "resp_tail line");
_Static_assert(sizeof(struct cxl_shm_server_ctl) == CXL_CONTROL_SIZE, "server control page");
_Static_assert(offsetof(struct cxl_shm_server_ctl, session_gen) == 24, "session generation");
_Static_assert(offsetof(struct cxl_shm_client_ctl, req_wake) == 24, "group wake word");
_Static_assert(offsetof(struct cxl_shm_client_ctl, resp_doorbell) == 32, "client doorbell");
_Static_assert(offsetof(struct cxl_shm_server_ctl, req_tail) == 64, "req_tail line");
_Static_assert(offsetof(struct cxl_shm_server_ctl, resp_head) == 128, "resp_head line");

/* ---- Messages ----------------------------------------------------------- */

#define CXL_MSG_HDR_SIZE      16u
#define CXL_MSG_ALIGN         8u
#define CXL_ARG_LEN_SIZE      4u
#define CXL_TTL_SIZE          8u

/* Message header, at the start of every request and response. */
struct cxl_msg_hdr {
    uint32_t len;                       /* header + payload, without padding */
    uint8_t  op;                        /* request: enum cxl_op; response: enum cxl_status */
    uint8_t  flags;
    uint16_t argc;                      /* request only; 0 in responses */
    uint64_t id;                        /* high half: session_gen; low half: the client's */
};
_Static_assert(sizeof(struct cxl_msg_hdr) == CXL_MSG_HDR_SIZE, "message header");
_Static_assert(offsetof(struct cxl_msg_hdr, id) == 8, "message id");

/*
 * A request id binds the request to its session (docs/ring-protocol.md 4.3):
 * the high 32 bits are the session_gen the server published at accept, the
 * low 32 bits the client's sequence number. The server executes a request only
 * when its generation is the current session's.
 */
#define CXL_ID_GEN_SHIFT      32u
#define CXL_ID_SEQ_MASK       0xffffffffull

static inline uint64_t cxl_id_make(uint32_t gen, uint32_t seq)
{
    return ((uint64_t)gen << CXL_ID_GEN_SHIFT) | seq;
}

static inline uint32_t cxl_id_gen(uint64_t id)
{
    return (uint32_t)(id >> CXL_ID_GEN_SHIFT);
}

enum cxl_op {
    CXL_OP_GET  = 1,                    /* key                 -> OK value | NOT_FOUND */
    CXL_OP_SET  = 2,                    /* [ttl_ms] key value  -> OK */
    CXL_OP_DEL  = 3,                    /* key...              -> OK u64 removed */
    CXL_OP_CMD  = 4,                    /* argv...             -> OK RESP2 reply */
    CXL_OP_PING = 5,                    /*                     -> OK */
};

#define CXL_FLAG_TTL          0x01u     /* SET: u64 ttl_ms precedes the arguments */
#define CXL_REQ_FLAGS_KNOWN   CXL_FLAG_TTL

enum cxl_status {
    CXL_ST_OK              = 0,
    CXL_ST_NOT_FOUND       = 1,
    CXL_ST_ERR             = 2,
    CXL_ST_OOM             = 3,
    CXL_ST_TOO_LARGE       = 4,
    CXL_ST_BAD_REQUEST     = 5,
    CXL_ST_UNKNOWN_OP      = 6,
    CXL_ST_PROTOCOL_ERROR  = 7,
    CXL_ST_UNKNOWN_OUTCOME = 8,         /* client-side verdict, never on the wire */
    CXL_ST_PUSH            = 9,         /* id 0: a pub/sub message (ring-protocol.md 15) */
};

static inline uint64_t cxl_align8(uint64_t n)
{
    return (n + (CXL_MSG_ALIGN - 1)) & ~(uint64_t)(CXL_MSG_ALIGN - 1);
}

/* ---- Layout 5: segments (docs/ring-protocol.md section 2) ---------------- */

/* One segment as the layout places it (a private copy, not shared memory). */
struct cxl_segment_plan {
    uint64_t offset, size, span;
    uint8_t  kind;
    uint16_t group, first_channel, channel_count;
};

static inline uint64_t cxl_pow2_ceil(uint64_t n)
{
    uint64_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

/*
 * Place the segments of a region: groups[g] channels in group g, g < ngroups.
 * Fills out[0 .. 2 * ngroups] and returns region_size, or 0 when the input is
 * out of range (ngroups 1..CXL_MAX_GROUPS, every group >= 1 channel, at most
 * CXL_MAX_CHANNELS in all, ring sizes powers of two in 4096..CXL_MAX_RING_SIZE,
 * align a power of two >= 4096). Every peer and the lab's host side use this one rule.
 */
static inline uint64_t cxl_layout_plan(const uint32_t *groups, uint32_t ngroups,
                                       uint32_t req_ring_size, uint32_t resp_ring_size,
                                       uint32_t segment_align,
                                       struct cxl_segment_plan *out)
{
    uint64_t off = 0, total = 0;
    uint32_t first = 0;

    if (ngroups < 1 || ngroups > CXL_MAX_GROUPS)
        return 0;
    if (segment_align < CXL_PAGE_SIZE || (segment_align & (segment_align - 1)))
        return 0;
    if (req_ring_size < CXL_MIN_RING_SIZE || (req_ring_size & (req_ring_size - 1)) ||
        req_ring_size > CXL_MAX_RING_SIZE ||
        resp_ring_size < CXL_MIN_RING_SIZE || (resp_ring_size & (resp_ring_size - 1)) ||
        resp_ring_size > CXL_MAX_RING_SIZE)
        return 0;
    for (uint32_t g = 0; g < ngroups; g++) {
        if (groups[g] < 1)
            return 0;
        total += groups[g];
    }
    if (total > CXL_MAX_CHANNELS)
        return 0;
    for (uint32_t k = 0; k < 1 + 2 * ngroups; k++) {
        struct cxl_segment_plan *seg = &out[k];
        if (k == 0) {
            seg->kind = CXL_SEG_HEADER;
            seg->group = CXL_GROUP_NONE;
            seg->first_channel = 0;
            seg->channel_count = 0;
            seg->size = CXL_HEADER_SIZE;
        } else {
            uint32_t g = (k - 1) / 2;
            seg->kind = (k % 2) ? CXL_SEG_CLIENT : CXL_SEG_SERVER;
            seg->group = (uint16_t)g;
            seg->first_channel = (uint16_t)first;
            seg->channel_count = (uint16_t)groups[g];
            seg->size = (uint64_t)groups[g] * (CXL_CONTROL_SIZE +
                        (seg->kind == CXL_SEG_CLIENT ? req_ring_size : resp_ring_size));
            if (seg->kind == CXL_SEG_SERVER)
                first += groups[g];
        }
        seg->span = cxl_pow2_ceil(seg->size);
        if (seg->span < segment_align)
            seg->span = segment_align;
        seg->offset = off;
        off += seg->span;
    }
    return off;
}

/* ---- Layout version 2 (the PoC's, docs/ring-protocol.md section 10) ------ */

#define CXL_V2_MAGIC          "CXLSHM1"
#define CXL_V2_VERSION        2u
#define CXL_V2_MAX_RINGS      8u
#define CXL_V2_SLOT_SIZE      4096u
#define CXL_V2_SLOT_HDR       16u
#define CXL_V2_MAX_PAYLOAD    (CXL_V2_SLOT_SIZE - CXL_V2_SLOT_HDR)
#define CXL_V2_RING_HDR       16u       /* u64 head, u64 tail */
#define CXL_V2_TYPE_DATA      1u
#define CXL_V2_TYPE_CLOSE     2u
#define CXL_V2_OP_GET         1u
#define CXL_V2_OP_SET         2u
#define CXL_V2_ST_OK          0u
#define CXL_V2_ST_MISS        1u
#define CXL_V2_ST_ERR         2u

struct cxl_v2_ring_desc {
    uint64_t req_off, req_sz, resp_off, resp_sz;
};

struct cxl_v2_header {
    char     magic[8];                  /*  0 */
    uint32_t version;                   /*  8 */
    uint32_t ring_count;                /* 12 */
    uint64_t reserved;                  /* 16 */
    struct cxl_v2_ring_desc ring[CXL_V2_MAX_RINGS]; /* 24 + 32 * i */
};
_Static_assert(offsetof(struct cxl_v2_header, ring) == 24, "v2 ring table");

struct cxl_v2_slot_hdr {
    uint32_t client_id;
    uint16_t type;
    uint16_t flags;
    uint32_t len;
    uint32_t reserved;
};
_Static_assert(sizeof(struct cxl_v2_slot_hdr) == CXL_V2_SLOT_HDR, "v2 slot header");

#endif /* CXL_RING_LAYOUT_H */
