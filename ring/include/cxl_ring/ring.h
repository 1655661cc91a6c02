/*
 * ring.h - the cxl_ring protocol in C: region geometry, byte rings and the
 * message codec, shared by the cxl_ring Redis driver (server side) and the
 * cxl-ring-bench client.
 *
 * Nothing here blocks or allocates. Functions that read shared memory copy
 * each field once into a private variable and validate the copy; everything
 * a peer could have written is treated as hostile input.
 */
#ifndef CXL_RING_RING_H
#define CXL_RING_RING_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

#include "barrier.h"
#include "layout.h"

/* ---- Geometry ----------------------------------------------------------- */

/* The configuration a server formats a region with. Zero fields take defaults. */
struct cxl_params {
    uint32_t channels;                  /* 0: the sum of groups[], or the default */
    uint32_t req_ring_size;
    uint32_t resp_ring_size;
    uint32_t max_value_size;
    uint32_t heartbeat_interval_ms;
    uint32_t client_lease_ms;
    uint32_t group_count;               /* 0: one group of `channels` */
    uint32_t groups[CXL_MAX_GROUPS];    /* channels per group, group_count entries */
    uint32_t segment_align;             /* 0: 4096 */
    uint32_t max_msg_size;              /* 0: max_value_size + CXL_MSG_SLACK */
};

/* A validated private copy of a region's geometry (layout 5, section 2). */
struct cxl_geometry {
    uint32_t channel_count;
    uint32_t req_ring_size;
    uint32_t resp_ring_size;
    uint32_t max_msg_size;
    uint32_t max_value_size;
    uint32_t heartbeat_interval_ms;
    uint32_t client_lease_ms;
    uint64_t region_size;
    uint64_t client_section_size;
    uint64_t server_section_size;
    uint32_t group_count;
    uint32_t segment_count;             /* 1 + 2 * group_count */
    uint32_t segment_align;
    struct cxl_segment_plan seg[CXL_MAX_SEGMENTS];  /* cxl_layout_plan()'s placement */
    uint8_t  chan_group[CXL_MAX_CHANNELS];          /* channel -> its group */
};

/* Segment index of group g's client (server) segment; segment 0 is the header. */
static inline uint32_t cxl_client_segment(uint32_t group) { return 1u + 2u * group; }
static inline uint32_t cxl_server_segment(uint32_t group) { return 2u + 2u * group; }

/* Fill defaults, check limits and compute the layout. Returns 0, or -1 with a message. */
int cxl_geometry_from_params(const struct cxl_params *params, struct cxl_geometry *geo,
                             char *err, size_t errlen);

/* Write geometry and the segment table into a header (formatting only: before magic). */
void cxl_header_write_geometry(struct cxl_shm_header *hdr, const struct cxl_geometry *geo);

/* Publish the magic last (F1). */
void cxl_header_publish_magic(struct cxl_shm_header *hdr);

/*
 * Read a header once (a private copy of it and its segment table) and validate
 * all of it (docs/ring-protocol.md 2.1, last paragraph). map_size is the bytes
 * of address space at the region's base (0: do not check). Returns 0 with
 * *geo filled; -1 with a message (bad magic, unknown version, a segment table
 * that is not the layout's: a layout mismatch). An all-zero header returns 1.
 */
int cxl_header_read(const struct cxl_shm_header *hdr, uint64_t map_size,
                    struct cxl_geometry *geo, char *err, size_t errlen);

/* True when two geometries describe the same layout (segment table included). */
int cxl_geometry_equal(const struct cxl_geometry *a, const struct cxl_geometry *b);

/* Offset in the region of channel chan's client (server) section, via the segment table. */
static inline uint64_t cxl_client_section_off(const struct cxl_geometry *geo, uint32_t chan)
{
    const struct cxl_segment_plan *seg = &geo->seg[cxl_client_segment(geo->chan_group[chan])];

    return seg->offset + (uint64_t)(chan - seg->first_channel) * geo->client_section_size;
}

static inline uint64_t cxl_server_section_off(const struct cxl_geometry *geo, uint32_t chan)
{
    const struct cxl_segment_plan *seg = &geo->seg[cxl_server_segment(geo->chan_group[chan])];

    return seg->offset + (uint64_t)(chan - seg->first_channel) * geo->server_section_size;
}

static inline struct cxl_shm_client_ctl *
cxl_client_ctl(void *base, const struct cxl_geometry *geo, uint32_t chan)
{
    return (struct cxl_shm_client_ctl *)((uint8_t *)base + cxl_client_section_off(geo, chan));
}

static inline struct cxl_shm_server_ctl *
cxl_server_ctl(void *base, const struct cxl_geometry *geo, uint32_t chan)
{
    return (struct cxl_shm_server_ctl *)((uint8_t *)base + cxl_server_section_off(geo, chan));
}

/* ---- Byte rings ----------------------------------------------------------- */

/*
 * A private view of one ring: where its data is and how big it is. The
 * indexes themselves stay in shared memory (shm_head / shm_tail point there);
 * each side keeps a private copy of the index it owns.
 */
struct cxl_ring {
    uint8_t *data;
    uint64_t size;                      /* power of two */
    uint64_t mask;
    volatile uint64_t *shm_head;        /* producer index, in the producer's section */
    volatile uint64_t *shm_tail;        /* consumer index, in the consumer's section */
};

void cxl_ring_request(void *base, const struct cxl_geometry *geo, uint32_t chan,
                      struct cxl_ring *ring);
void cxl_ring_response(void *base, const struct cxl_geometry *geo, uint32_t chan,
                       struct cxl_ring *ring);

/* Copy len bytes into the ring at stream position pos, wrapping at the end. */
static inline void cxl_ring_copy_in(const struct cxl_ring *r, uint64_t pos,
                                    const void *src, uint64_t len)
{
    uint64_t off = pos & r->mask;
    uint64_t first = r->size - off;

    if (first > len)
        first = len;
    memcpy(r->data + off, src, first);
    if (len > first)
        memcpy(r->data, (const uint8_t *)src + first, len - first);
}

/* Copy len bytes out of the ring from stream position pos, wrapping at the end. */
static inline void cxl_ring_copy_out(const struct cxl_ring *r, uint64_t pos,
                                     void *dst, uint64_t len)
{
    uint64_t off = pos & r->mask;
    uint64_t first = r->size - off;

    if (first > len)
        first = len;
    memcpy(dst, r->data + off, first);
    if (len > first)
        memcpy((uint8_t *)dst + first, r->data, len - first);
}

/* Zero-fill n bytes at pos (message padding). */
static inline void cxl_ring_zero(const struct cxl_ring *r, uint64_t pos, uint64_t n)
{
    static const uint8_t zeros[CXL_MSG_ALIGN];

    if (n)
        cxl_ring_copy_in(r, pos, zeros, n);
}

/*
 * Zero n bytes at stream position pos, wrapping (docs/ring-protocol.md 3.1:
 * a producer scrubs bytes its consumer has released). n >= size zeroes the
 * whole data area.
 */
static inline void cxl_ring_scrub(const struct cxl_ring *r, uint64_t pos, uint64_t n)
{
    uint64_t off = pos & r->mask;
    uint64_t first = r->size - off;

    if (n >= r->size) {
        memset(r->data, 0, r->size);
        return;
    }
    if (first > n)
        first = n;
    memset(r->data + off, 0, first);
    if (n > first)
        memset(r->data, 0, n - first);
}

/* ---- Message codec -------------------------------------------------------- */

#define CXL_MAX_ARGS 1024u              /* argc limit for CMD/DEL argv tables */

/* A decoded request: pointers into a private copy of the message. */
struct cxl_req {
    uint64_t id;
    uint8_t  op;
    uint8_t  flags;
    uint16_t argc;
    uint64_t ttl_ms;                    /* FLAG_TTL only */
    const uint8_t *argv[CXL_MAX_ARGS];
    uint32_t argl[CXL_MAX_ARGS];
};

/*
 * Decode and validate a request held in private memory (msg, len bytes, len
 * already checked against the ring). Returns CXL_ST_OK, or the error status
 * the server answers with (BAD_REQUEST, UNKNOWN_OP, TOO_LARGE); err gets a
 * one-line reason. Never reads outside msg[0, len).
 */
int cxl_req_decode(const uint8_t *msg, uint32_t len, uint32_t max_value_size,
                   struct cxl_req *req, char *err, size_t errlen);

/*
 * The server's framing check for the next message of a request ring
 * (protocol doc section 6), on private copies: used = head - tail, len from
 * the copied header. CXL_FRAME_OK: copy and decode len bytes;
 * CXL_FRAME_SKIP: answer TOO_LARGE and skip align8(len) bytes;
 * CXL_FRAME_QUARANTINE: the stream is no longer framed (*why says how).
 */
enum cxl_frame { CXL_FRAME_OK = 0, CXL_FRAME_SKIP = 1, CXL_FRAME_QUARANTINE = 2 };
int cxl_frame_check(uint64_t used, uint64_t ring_size, uint32_t len, uint32_t max_msg_size,
                    const char **why);

/* Bytes a request with these arguments takes (unpadded), for limits checks. */
uint64_t cxl_req_size(uint32_t argc, const uint32_t *argl, int with_ttl);

/*
 * Encode a request into buf (at least cxl_req_size() bytes). Returns the
 * unpadded length.
 */
uint32_t cxl_req_encode(uint8_t *buf, uint8_t op, uint8_t flags, uint64_t id, uint64_t ttl_ms,
                        uint32_t argc, const uint8_t *const *argv, const uint32_t *argl);

/* ---- Regions ------------------------------------------------------------ */

/* What a peer may do with bytes of its mapping. */
enum cxl_access {
    CXL_ACCESS_NONE  = 0,               /* not mapped: touching it faults */
    CXL_ACCESS_READ  = 1,
    CXL_ACCESS_WRITE = 2,
    CXL_ACCESS_RW    = CXL_ACCESS_READ | CXL_ACCESS_WRITE,
};

/* Who maps a directory region (docs/ring-protocol.md section 2). */
enum cxl_role {
    CXL_ROLE_SERVER = 1,                /* header, server-* read-write; client-* read-only */
    CXL_ROLE_CLIENT = 2,                /* header, server-* read-only; client-* rw if it can */
};

/* One segment file of a directory region, as mapped. */
struct cxl_region_segment {
    uint64_t offset;                    /* in the region */
    uint64_t mapped;                    /* bytes mapped at base + offset; 0 = absent */
    uint8_t  access;                    /* enum cxl_access */
    int      fd;
};

struct cxl_region {
    void    *base;
    uint64_t size;                      /* bytes mapped (file) or reserved (directory) */
    int      fd;                        /* the file form's file; -1 for a directory */
    char     kind[16];                  /* "file", "uio", "resource", "devdax", "dir" */
    int      is_dir;                    /* a directory of segment files (security secdsm) */
    uint32_t nseg;                      /* directory: segments, in segment order */
    struct cxl_region_segment seg[CXL_MAX_SEGMENTS];
};

/* A device-DAX device's mapping unit when sysfs does not say (its default: 2 MiB). */
#define CXL_DAX_ALIGN (2u << 20)

/*
 * Map a region by path: a regular file (/dev/shm, hugetlbfs), /dev/uioN (the
 * largest map, normally BAR2 = map1), a sysfs PCI resourceN file, or a device-DAX
 * device /dev/daxN.M (the devdax medium: mapped whole, or in multiples of its
 * alignment), read-write (security off: one file holds the whole region). map_size 0
 * means "find it": file size, uio maps/mapN/size, resource file size, the DAX
 * device's sysfs size. create_size > 0 creates or
 * extends a regular file to that size (server only).
 */
int cxl_region_map(const char *path, uint64_t map_size, uint64_t create_size,
                   struct cxl_region *region, char *err, size_t errlen);

/* True when path is a directory (a region of segment files, security secdsm). */
int cxl_region_is_dir(const char *path);

/*
 * Map a directory of segment files (header, client-<g>, server-<g>) laid out
 * by geo: reserve geo->region_size bytes with no access, then map every segment
 * file present at base + offset (MAP_FIXED | MAP_SHARED), at least size(k) and
 * at most span(k) bytes of it.
 *   CXL_ROLE_SERVER: header and every server-* opened read-write, every client-*
 *     read-only; each must be there (create: missing or empty files are created
 *     with span bytes, mode 0600, in the existing directory).
 *   CXL_ROLE_CLIENT: header (must be there) and server-* read-only; client-*
 *     read-write when the file allows it, else read-only; absent = unmapped.
 * Returns 0, or -1 with a message naming the file and the fix.
 */
int cxl_region_map_dir(const char *dir, const struct cxl_geometry *geo, int role, int create,
                       struct cxl_region *region, char *err, size_t errlen);

void cxl_region_unmap(struct cxl_region *region);

/*
 * 1 when every mapped part of the region is a regular file of this host (tmpfs,
 * hugetlbfs, any file system but sysfs): a futex on it reaches every process that maps
 * it. 0 with why filled for uio devices and PCI resource files, whose other peers are
 * other machines (section 8: futex only works within one kernel).
 */
int cxl_region_host_memory(const struct cxl_region *region, char *why, size_t whylen);

/*
 * What this mapping allows on [off, off + len) of the region: enum cxl_access
 * bits, NONE if any byte of it is unmapped. Check before touching a segment
 * that may be absent (a directory region): a touch there faults.
 */
unsigned cxl_region_access(const struct cxl_region *region, uint64_t off, uint64_t len);

/* A fresh random non-zero 64-bit value (tokens, epochs). */
uint64_t cxl_random_u64(void);

/* Monotonic clock in nanoseconds. */
uint64_t cxl_now_ns(void);

/*
 * The injected far-memory delay (docs/ring-protocol.md 2.4): every party that reads a new
 * batch from a ring first spins ns nanoseconds, as a load from far memory stalls the CPU
 * that issues it. Writes are posted, as CXL.mem writes are, and wait for nothing.
 */
void cxl_access_delay_spin(uint32_t ns);
static inline void cxl_access_delay(uint32_t ns)
{
    if (ns)
        cxl_access_delay_spin(ns);
}

/* The delay a region's server published (clamped to CXL_MAX_ACCESS_DELAY_NS). */
uint32_t cxl_header_access_delay(const struct cxl_shm_header *hdr);

#endif /* CXL_RING_RING_H */
