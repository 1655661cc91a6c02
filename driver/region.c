/*
 * region.c - map the shared region and decide what to do with its header:
 * format it, reuse it, or refuse it (docs/ring-protocol.md section 7,
 * driver argument `format`).
 *
 * The region is one file or device (security off, and layout v2), or a
 * directory of segment files (docs/ring-protocol.md section 2): header and
 * server-* mapped read-write, client-* read-only, so that the server cannot
 * write a client segment even by mistake (cxl_region_map_dir, ring/src/ring.c).
 *
 *   format auto    all zeros -> format; header equal to our configuration ->
 *                  reuse; anything else -> refuse, saying what differs
 *   format always  format whatever is there
 *   format never   reuse an equal header, refuse everything else
 *
 * Formatting writes the geometry first and publishes the magic last (F1);
 * readers load the magic first (F2). Reuse retires every session so that
 * clients of the previous server instance claim again.
 */
#include "driver.h"
#include "cxl_ring/notify.h"

#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int choose_notify(struct drv_server *s, char *err, size_t errlen);

static const char *format_name(int f)
{
    return f == DRV_FORMAT_ALWAYS ? "always" : f == DRV_FORMAT_NEVER ? "never" : "auto";
}

/* ---- Layout 5 ----------------------------------------------------------- */

/*
 * Format: the header and every server section's control page are ours to
 * zero; the client sections are not (protocol rule 1: the server never writes
 * a client segment). A claim left there is retired instead: dead_token :=
 * claim_token, so its holder must claim again (docs/ring-protocol.md 7).
 */
static void v5_format(struct drv_server *s)
{
    struct cxl_shm_header *h = s->khdr;
    uint32_t c;

    /* Unpublish first: a reader that loads magic 0 ignores the rest. */
    cxl_store_release64((volatile uint64_t *)(void *)h->magic, 0);
    memset((uint8_t *)h + CXL_MAGIC_LEN, 0, CXL_HEADER_SIZE - CXL_MAGIC_LEN);
    for (c = 0; c < s->geo.channel_count; c++) {
        struct cxl_shm_client_ctl *kclient = cxl_client_ctl(s->region.base, &s->geo, c);
        struct cxl_shm_server_ctl *kserver = cxl_server_ctl(s->region.base, &s->geo, c);
        /* S1' pairs with a claimer's S1 (a client of the previous format). */
        uint64_t claim = cxl_load_acquire64(&kclient->claim_token);

        /* control pages only: ring data needs no zeroing (and stays sparse) */
        memset(kserver, 0, CXL_CONTROL_SIZE);
        if (claim)
            cxl_store_relaxed64(&kserver->dead_token, claim);
    }
    cxl_header_write_geometry(h, &s->geo);
    cxl_store_relaxed32(&h->server_state, CXL_SERVER_STARTING);
    /* F1 pairs with the readers' F2: a reader that sees the magic sees the whole
     * geometry, the segment table and the server control pages written above. */
    cxl_header_publish_magic(h);
    s->formatted = 1;
}

/* "4,2": the channels of each group. */
static void groups_text(const struct cxl_geometry *g, char *out, size_t outlen)
{
    size_t n = 0;
    uint32_t k;

    out[0] = 0;
    for (k = 0; k < g->group_count && n < outlen; k++)
        n += (size_t)snprintf(out + n, outlen - n, "%s%u", k ? "," : "",
                              (unsigned)g->seg[cxl_client_segment(k)].channel_count);
}

/* Name every field in which the region's header differs from our configuration. */
static void describe_diff(const struct cxl_geometry *have, const struct cxl_geometry *want,
                          char *out, size_t outlen)
{
    char hg[160], wg[160];
    size_t n = 0;

    out[0] = 0;
#define DIFF(field, arg) \
    if (have->field != want->field && n < outlen) \
        n += (size_t)snprintf(out + n, outlen - n, "%s%s %u (configured %u)", \
                              n ? ", " : "", arg, (unsigned)have->field, \
                              (unsigned)want->field);
    DIFF(channel_count, "channels");
    groups_text(have, hg, sizeof(hg));
    groups_text(want, wg, sizeof(wg));
    if (strcmp(hg, wg) && n < outlen)
        n += (size_t)snprintf(out + n, outlen - n, "%sgroups %s (configured %s)",
                              n ? ", " : "", hg, wg);
    DIFF(segment_align, "segment_align");
    DIFF(req_ring_size, "req_ring");
    DIFF(resp_ring_size, "resp_ring");
    DIFF(max_value_size, "max_value");
    DIFF(heartbeat_interval_ms, "heartbeat_ms");
    DIFF(client_lease_ms, "client_lease_ms");
#undef DIFF
    if (!n)
        snprintf(out, outlen, "region_size");
}

/* A header of layout 3 or 4 (one block per channel, before segments): say what to do. */
static const char *earlier_layout_hint(const struct cxl_shm_header *h)
{
    uint64_t magic, want;
    uint32_t version;

    memcpy(&want, CXL_MAGIC, CXL_MAGIC_LEN);
    magic = cxl_load_acquire64((const volatile uint64_t *)(const void *)h->magic);
    version = cxl_load_relaxed32(&h->version);
    if (magic != want || (version != 3 && version != 4))
        return "";
    return "; layout 4 is no longer served: this build speaks layout 5 (segments, "
           "docs/ring-protocol.md section 2), so reformat the region and update its clients";
}

/* A directory of symlinks: a guest's view of the segment devices granted to it. */
static int holds_symlinks(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;

    if (!d)
        return 0;
    while (!found && (e = readdir(d)))
        found = e->d_type == DT_LNK;
    closedir(d);
    return found;
}

/*
 * Refuse a region another live server is serving: its heartbeat still moves.
 * Only asked when the header says STARTING or RUNNING (an unclean stop, or a
 * second server on the same region).
 */
static int another_server_alive(struct drv_server *s)
{
    struct cxl_shm_header *h = s->khdr;
    uint32_t state = cxl_load_acquire32(&h->server_state);
    uint64_t before, wait_ms;
    struct timespec ts;

    if (state != CXL_SERVER_RUNNING && state != CXL_SERVER_STARTING)
        return 0;
    before = cxl_load_relaxed64(&h->server_heartbeat);
    wait_ms = 2ull * s->geo.heartbeat_interval_ms + 20;
    ts.tv_sec = (time_t)(wait_ms / 1000);
    ts.tv_nsec = (long)(wait_ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
    return cxl_load_relaxed64(&h->server_heartbeat) != before;
}

/* Reuse: retire every session of the previous server instance. */
static void v5_retire_all(struct drv_server *s)
{
    uint32_t c;

    for (c = 0; c < s->geo.channel_count; c++) {
        struct cxl_shm_client_ctl *kclient = cxl_client_ctl(s->region.base, &s->geo, c);
        struct cxl_shm_server_ctl *kserver = cxl_server_ctl(s->region.base, &s->geo, c);
        uint64_t claim = cxl_load_acquire64(&kclient->claim_token);

        /* S2 (retire) pairs with the client's S3: dead_token before ack_token, so a
         * claimer that sees ack_token 0 also sees the new dead_token. */
        if (claim)
            cxl_store_release64(&kserver->dead_token, claim);
        cxl_store_release64(&kserver->ack_token, 0);
        cxl_store_release32(&kserver->chan_state, CXL_CHAN_FREE);
    }
}

static int v5_open(struct drv_server *s, char *err, size_t errlen)
{
    struct cxl_geometry found;
    char why[DRV_ERRLEN];
    int rc;

    s->khdr = s->region.base;
    /* A directory's segments were placed by our configuration: a header that describes
     * another layout is named as a difference below, not as a short mapping. */
    rc = cxl_header_read(s->khdr, s->region.is_dir ? 0 : s->region.size, &found, why,
                         sizeof(why));
    if (s->cfg.format == DRV_FORMAT_ALWAYS || (s->cfg.format == DRV_FORMAT_AUTO && rc == 1)) {
        v5_format(s);
        return 0;
    }
    if (rc == 1) {
        snprintf(err, errlen, "region %s is not formatted and format is never", s->cfg.path);
        return -1;
    }
    if (rc < 0) {
        snprintf(err, errlen, "refusing region %s: %s%s (format %s; format always "
                 "reformats it)", s->cfg.path, why, earlier_layout_hint(s->khdr),
                 format_name(s->cfg.format));
        return -1;
    }
    if (!cxl_geometry_equal(&found, &s->geo)) {
        describe_diff(&found, &s->geo, why, sizeof(why));
        snprintf(err, errlen, "refusing region %s: its layout differs from the configuration: "
                 "%s (format %s; format always reformats it)", s->cfg.path, why,
                 format_name(s->cfg.format));
        return -1;
    }
    if (another_server_alive(s)) {
        snprintf(err, errlen, "refusing region %s: another server (pid %u) is serving it; "
                 "its heartbeat is moving", s->cfg.path,
                 cxl_load_relaxed32(&s->khdr->server_pid));
        return -1;
    }
    /* Relaxed epoch: the STARTING release below orders it (L1). */
    cxl_store_relaxed64(&s->khdr->server_epoch, 0);
    /* Not asleep (a previous run may have stopped asleep). Here, before the poll thread
     * starts: from then on it alone writes the flag, and one that goes to sleep before
     * drv_region_running() must not find it cleared behind its back (no client would ring). */
    cxl_store_relaxed32(&s->khdr->server_sleeping, 0);
    /* L1 (STARTING) pairs with L2 and with acquire loads of server_state: a reader that
     * sees STARTING sees epoch 0, never the previous run's epoch beside the new state. */
    cxl_store_release32(&s->khdr->server_state, CXL_SERVER_STARTING);
    v5_retire_all(s);
    return 0;
}

/* ---- Layout v2 ---------------------------------------------------------- */

static int v2_open(struct drv_server *s, char *err, size_t errlen)
{
    char why[DRV_ERRLEN];
    int rc = drv_v2_check(s, why, sizeof(why));

    if (s->cfg.format == DRV_FORMAT_ALWAYS || (s->cfg.format == DRV_FORMAT_AUTO && rc == 1)) {
        drv_v2_format(s);
        s->formatted = 1;
        return 0;
    }
    if (rc == 1) {
        snprintf(err, errlen, "region %s is not formatted and format is never", s->cfg.path);
        return -1;
    }
    if (rc < 0) {
        snprintf(err, errlen, "refusing region %s: %s (format %s)", s->cfg.path, why,
                 format_name(s->cfg.format));
        return -1;
    }
    return 0;
}

/* ---- Both ----------------------------------------------------------------- */

int drv_region_open(struct drv_server *s, char *err, size_t errlen)
{
    struct drv_config *cfg = &s->cfg;
    uint64_t need, create = 0;
    struct stat st;
    int directory = cxl_region_is_dir(cfg->path);

    if (cfg->layout == CXL_LAYOUT_VERSION) {
        if (cxl_geometry_from_params(&cfg->params, &s->geo, err, errlen) < 0)
            return -1;
        need = s->geo.region_size;
    } else {
        need = drv_v2_layout_size(cfg->v2_rings, cfg->v2_slots);
    }
    if (directory) {
        if (cfg->layout != CXL_LAYOUT_VERSION) {
            snprintf(err, errlen, "region %s is a directory of segment files, which only "
                     "layout v%u has; layout v2 needs one file", cfg->path, CXL_LAYOUT_VERSION);
            return -1;
        }
        if (cfg->map_size) {
            snprintf(err, errlen, "map_size applies to a one-file region; the segments of the "
                     "directory %s are mapped at their spans: drop map_size", cfg->path);
            return -1;
        }
        /* On one host missing segment files are created; a directory of symlinks is a
         * guest's view of the devices granted to it, where nothing can be created. */
        if (cxl_region_map_dir(cfg->path, &s->geo, CXL_ROLE_SERVER,
                               !holds_symlinks(cfg->path), &s->region, err, errlen) < 0)
            return -1;
    } else {
        /* A new (absent or empty) file is created at the layout's size, or map_size. */
        if (stat(cfg->path, &st) < 0 ? errno == ENOENT : (S_ISREG(st.st_mode) && st.st_size == 0))
            create = cfg->map_size > need ? cfg->map_size : need;
        if (cxl_region_map(cfg->path, cfg->map_size, create, &s->region, err, errlen) < 0)
            return -1;
        if (s->region.size < need) {
            snprintf(err, errlen, "region %s maps %" PRIu64 " bytes; the configured layout "
                     "needs %" PRIu64, cfg->path, s->region.size, need);
            cxl_region_unmap(&s->region);
            return -1;
        }
    }
    if ((cfg->layout == CXL_LAYOUT_VERSION ? v5_open(s, err, errlen) : v2_open(s, err, errlen)) < 0) {
        cxl_region_unmap(&s->region);
        return -1;
    }
    return choose_notify(s, err, errlen);
}

/* ---- The doorbell (notify_kind 2) ------------------------------------------------ */

#define DOORBELL_MAGIC     "CXLBELL\0"  /* docs/doorbell.md section 2: the directory in BAR2 */
#define DOORBELL_OFF_SEQ   12
#define DOORBELL_OFF_SELF  16
#define DOORBELL_MAP       4096

/*
 * Our own peer id from the directory the hypervisor's doorbell server keeps in the device's
 * memory (mmap offset 0 of the uio device): seq, the id, seq again, retried while seq is odd
 * (being rewritten) or changed. 1 found, 0 no directory there (why says why: a FIFO, a
 * device without the magic), -1 a directory that cannot be read (why).
 */
static int doorbell_directory_peer(int fd, uint32_t *peer, char *why, size_t whylen)
{
    const volatile uint8_t *b;
    void *m = mmap(NULL, DOORBELL_MAP, PROT_READ, MAP_SHARED, fd, 0);
    uint32_t s1, s2, id = 0;
    int tries;

    if (m == MAP_FAILED) {
        snprintf(why, whylen, "no directory (cannot map it: %s)", strerror(errno));
        return 0;
    }
    b = m;
    if (memcmp((const void *)b, DOORBELL_MAGIC, 8) != 0) {
        snprintf(why, whylen, "no directory (no magic CXLBELL at offset 0 of its memory)");
        munmap(m, DOORBELL_MAP);
        return 0;
    }
    for (tries = 0; tries < 20000; tries++) {
        s1 = le32toh(__atomic_load_n((const uint32_t *)(b + DOORBELL_OFF_SEQ), __ATOMIC_ACQUIRE));
        if (!(s1 & 1)) {
            id = le32toh(__atomic_load_n((const uint32_t *)(b + DOORBELL_OFF_SELF),
                                         __ATOMIC_RELAXED));
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            s2 = le32toh(__atomic_load_n((const uint32_t *)(b + DOORBELL_OFF_SEQ),
                                         __ATOMIC_RELAXED));
            if (s1 == s2)
                break;
        }
        usleep(50);
    }
    munmap(m, DOORBELL_MAP);
    if (tries == 20000) {
        snprintf(why, whylen, "its directory is being rewritten for over a second (seq odd or "
                 "changing)");
        return -1;
    }
    if (id > 0xffff) {
        snprintf(why, whylen, "its directory gives peer id %u, above 65535", id);
        return -1;
    }
    *peer = id;
    return 1;
}

/*
 * Open the doorbell given by the module argument `doorbell`: the uio_cxl_doorbell device
 * (our peer id from its directory), or for tests a FIFO or a terminal standing in for it (the peer id
 * from the argument doorbell_peer, and the log says so). 0, or -1 with why.
 */
static int open_doorbell(struct drv_server *s, char *why, size_t whylen)
{
    const char *path = s->cfg.doorbell;
    char dir_why[128];
    struct stat st;
    int fd, rc;

    /* Read-write (a FIFO then always has a writer: no POLLHUP), non-blocking: drained to
     * EAGAIN after each wake. */
    fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "cannot open the doorbell %.100s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0 || !(S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode))) {
        snprintf(why, whylen, "the doorbell %.100s is not a device (uio) or a FIFO", path);
        close(fd);
        return -1;
    }
    /* Tests stand in for the device with a FIFO (rings to the server only) or a terminal in
     * raw mode (rings both ways through a test's router: tests/ring/test_doorbell_clients.py). */
    if (S_ISCHR(st.st_mode) && !isatty(fd))
        rc = doorbell_directory_peer(fd, &s->doorbell_peer, dir_why, sizeof(dir_why));
    else
        rc = (snprintf(dir_why, sizeof(dir_why), "no directory (a %s)",
                       S_ISFIFO(st.st_mode) ? "FIFO" : "terminal"), 0);
    if (rc < 0) {
        snprintf(why, whylen, "the doorbell %.50s: %.70s", path, dir_why);
        close(fd);
        return -1;
    }
    s->kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->kick_fd < 0) {
        snprintf(why, whylen, "cannot create an eventfd: %s", strerror(errno));
        close(fd);
        return -1;
    }
    s->doorbell_fd = fd;
    s->notify_fds = 1;
    if (rc > 0) {
        snprintf(s->doorbell_src, sizeof(s->doorbell_src), "directory");
        drv_log("notice", DRV_NAME ": doorbell %s: peer id %u from its directory, vector 0",
                path, s->doorbell_peer);
    } else {
        s->doorbell_peer = s->cfg.doorbell_peer;
        snprintf(s->doorbell_src, sizeof(s->doorbell_src), "doorbell_peer argument");
        drv_log("warning", DRV_NAME ": doorbell %s is not a uio_cxl_doorbell device: %s; "
                "publishing peer id %u from the doorbell_peer argument", path, dir_why,
                s->doorbell_peer);
    }
    return 0;
}

/*
 * How the idle poll thread waits (section 8): futex when every peer shares this kernel
 * (the region is files of this host); else the doorbell when the argument `doorbell`
 * names one that opens; else back-off polling with the reason, which CXLRING.INFO shows.
 * notify futex or notify doorbell where it cannot work is a configuration error.
 */
static int choose_notify(struct drv_server *s, char *err, size_t errlen)
{
    char why[sizeof(s->notify_why) / 2 - 8], dwhy[sizeof(s->notify_why) / 2 - 8];
    int host;

    s->notify_kind = CXL_NOTIFY_NONE;
    s->notify_why[0] = 0;
    s->notify_fds = 0;
    s->doorbell_fd = s->kick_fd = -1;
    s->doorbell_peer = 0;
    s->doorbell_src[0] = 0;
    if (s->cfg.layout != CXL_LAYOUT_VERSION) {
        snprintf(s->notify_why, sizeof(s->notify_why),
                 "layout v2 has no notification fields: polling");
        return 0;
    }
    if (s->cfg.notify == DRV_NOTIFY_OFF) {
        snprintf(s->notify_why, sizeof(s->notify_why), "notify off: polling");
        return 0;
    }
    if (s->cfg.test_remote_region) {
        snprintf(why, sizeof(why), "test_remote_region: the region counts as another "
                 "machine's memory");
        host = 0;
    } else {
        host = cxl_region_host_memory(&s->region, why, sizeof(why));
    }
    if (s->cfg.notify == DRV_NOTIFY_DOORBELL) {
        /* Asked for: on any region (on one host too, where it stands in for the VMs'). */
        if (!s->cfg.doorbell[0]) {
            snprintf(err, errlen, "notify doorbell needs a doorbell: add the argument "
                     "`doorbell /dev/cxl/doorbell` (this VM's uio_cxl_doorbell device), or use "
                     "notify auto");
            cxl_region_unmap(&s->region);
            return -1;
        }
        if (open_doorbell(s, dwhy, sizeof(dwhy)) < 0) {
            snprintf(err, errlen, "notify doorbell: %s; load uio_cxl_doorbell or fix the "
                     "doorbell argument, or use notify auto", dwhy);
            cxl_region_unmap(&s->region);
            return -1;
        }
        s->notify_kind = CXL_NOTIFY_DOORBELL;
    } else if (!host) {
        if (s->cfg.notify == DRV_NOTIFY_FUTEX) {
            snprintf(err, errlen, "notify futex: %s; use notify auto, doorbell or off", why);
            cxl_region_unmap(&s->region);
            return -1;
        }
        if (!s->cfg.doorbell[0])
            snprintf(s->notify_why, sizeof(s->notify_why), "%s: polling", why);
        else if (open_doorbell(s, dwhy, sizeof(dwhy)) < 0)
            snprintf(s->notify_why, sizeof(s->notify_why), "%s; %s: polling", why, dwhy);
        else
            s->notify_kind = CXL_NOTIFY_DOORBELL;
    } else if (s->geo.group_count > 1 && !cxl_futex_waitv_probe()) {
        snprintf(s->notify_why, sizeof(s->notify_why),
                 "%u groups need futex_waitv (Linux 5.16+), which this kernel lacks: polling",
                 s->geo.group_count);
    } else {
        s->notify_kind = CXL_NOTIFY_FUTEX;
    }
    return 0;
}

/*
 * After the threads run: a new epoch, then RUNNING, both with release (L1).
 * The epoch store is the edge clients rely on (their L2 is an acquire load of
 * server_epoch); the RUNNING store keeps the new epoch ahead of RUNNING for a
 * reader that acquires server_state.
 */
void drv_region_running(struct drv_server *s)
{
    if (s->cfg.layout != CXL_LAYOUT_VERSION)
        return;
    s->epoch = cxl_random_u64();
    cxl_store_relaxed32(&s->khdr->server_pid, (uint32_t)getpid());
    /* Section 8: how to wake us; ordered before the new epoch by L1. Not server_sleeping:
     * the poll thread runs already and owns it (cleared at STARTING, v5_open). */
    cxl_store_relaxed32(&s->khdr->doorbell_peer,
                        s->notify_kind == CXL_NOTIFY_DOORBELL ? s->doorbell_peer : 0);
    cxl_store_relaxed32(&s->khdr->doorbell_vector, 0);  /* vector 0: the doorbell's first */
    cxl_store_relaxed32(&s->khdr->notify_kind, s->notify_kind);
    /* Section 2.4: the delay every party spins per ring batch it reads in this run. */
    cxl_store_relaxed32(&s->khdr->access_delay_ns, s->cfg.access_delay_ns);
    /* L1 pairs with the client's L2: a client that sees the new epoch also sees every
     * session of the previous run retired (v5_retire_all) and our pid. */
    cxl_store_release64(&s->khdr->server_epoch, s->epoch);
    /* L1 (RUNNING): a reader that acquires server_state and sees RUNNING sees the new epoch. */
    cxl_store_release32(&s->khdr->server_state, CXL_SERVER_RUNNING);
}

void drv_region_stopping(struct drv_server *s, uint32_t state)
{
    if (s->cfg.layout == CXL_LAYOUT_VERSION && s->khdr)
        cxl_store_release32(&s->khdr->server_state, state);
}

void drv_region_close(struct drv_server *s)
{
    cxl_region_unmap(&s->region);
    s->khdr = NULL;
    if (s->notify_fds) {
        close(s->doorbell_fd);
        close(s->kick_fd);
        s->doorbell_fd = s->kick_fd = -1;
        s->notify_fds = 0;
    }
}
