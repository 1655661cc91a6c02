/*
 * chase.c - idle load-to-use latency of a memory, by pointer chasing (docs/benchmarks.md,
 * "Pointer chase (far-memory latency)").
 *
 * One pointer per --stride bytes (default one per 64-byte cache line) of a --size working set,
 * linked into one random cycle that visits every line exactly once; the walk p = *(void **)p
 * makes every load depend on the one before, so no two are in flight and the time per load is
 * the latency of wherever the line lives. The cycle is random so that the hardware prefetchers
 * cannot run ahead of it: the order of the blocks (--block, default 2 MiB: one huge page, 512
 * base pages, inside the second-level TLB's reach) is one cycle by Sattolo's algorithm, and
 * inside each block the order of its lines is shuffled (Fisher-Yates); all lines of a block are
 * visited before the next block. --block 4096 (one base page) measures less than the memory
 * (the DRAM row and the neighbouring line are often still open or fetched); --block full (every
 * line anywhere) measures page walks too unless the pages are huge. docs/benchmarks.md has the
 * figures. xorshift64*, seeded by --seed: the same seed, the same chain.
 *
 * Memory: --anon (private anonymous memory: the guest's RAM / local DRAM; --hugepages asks
 * MAP_HUGETLB and falls back to madvise(MADV_HUGEPAGE), saying so) or --path FILE mapped
 * MAP_SHARED read-write (a /dev/shm file, a uio device, a sysfs PCI resource2 file, a DAX
 * device) at --offset, --size bytes of it (default: the file's size after --offset; a char
 * device, which reports no size, needs --size). Nothing outside [offset, offset+size) is
 * written.
 *
 * Timing: one warm-up lap of the whole chain, then --samples batches of --loads-per-sample
 * loads, CLOCK_MONOTONIC around each; ns per load per batch; min, p50, p90, p99, max, mean over
 * the batches. One JSON object on stdout (--text: one line for a human); notes and warnings on
 * stderr and in the JSON.
 *
 * --verify: build the chain, walk it once from the start and check that it comes back after
 * exactly size/stride steps, every step inside the set, every line seen once; exit 0 or 1.
 *
 * Exit 0 ok; 1 --verify found a broken chain; 2 usage, open or map error (one line naming
 * the fix).
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fs.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SIZE   (256ull << 20)
#define DEFAULT_BLOCK  (2ull << 20)
#define MAX_NOTES      8

struct opts {
    bool anon, hugepages, text, verify, size_given, block_full, block_given;
    const char *path;
    uint64_t size, offset, stride, block, seed, samples, loads;
    int cpu;
    int64_t break_at;   /* tests only: point this line at itself after building */
};

static const char *notes[MAX_NOTES];
static int n_notes;
static const char *warnings[MAX_NOTES];
static int n_warnings;

/* ---- errors ---------------------------------------------------------------------------- */

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;

    fputs("cxl-chase: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

/* A mapping that is shorter than it claimed (a device smaller than --size, a file truncated
 * under us) raises SIGBUS on the first touch past its end: say so instead of crashing. */
static void on_fault(int sig)
{
    static const char bus[] = "cxl-chase: SIGBUS touching the mapping: the file or device is "
                              "smaller than --offset + --size (give a smaller --size)\n";
    static const char segv[] = "cxl-chase: SIGSEGV touching the mapping: it cannot be written "
                               "(the chain is stored in it; map a writable region)\n";

    if (sig == SIGBUS)
        (void)!write(2, bus, sizeof(bus) - 1);
    else
        (void)!write(2, segv, sizeof(segv) - 1);
    _exit(2);
}

static void note(const char *msg)
{
    if (n_notes < MAX_NOTES)
        notes[n_notes++] = msg;
    fprintf(stderr, "cxl-chase: note: %s\n", msg);
}

static void warn(const char *msg)
{
    if (n_warnings < MAX_NOTES)
        warnings[n_warnings++] = msg;
    fprintf(stderr, "cxl-chase: warning: %s\n", msg);
}

/* ---- parsing ----------------------------------------------------------------------------- */

/* A byte count or a count: decimal, optional k/m/g (binary) suffix; no sign, no overflow. */
static uint64_t parse_u64(const char *opt, const char *s, bool suffixes)
{
    char *end;
    unsigned long long v;
    uint64_t mul = 1;

    if (!s || !*s || !isdigit((unsigned char)*s))
        die("%s wants a non-negative number, not '%s'", opt, s ? s : "");
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        die("%s %s is out of range", opt, s);
    if (suffixes && *end) {
        switch (tolower((unsigned char)*end)) {
        case 'k': mul = 1ull << 10; break;
        case 'm': mul = 1ull << 20; break;
        case 'g': mul = 1ull << 30; break;
        default: die("%s %s: unknown suffix (use k, m or g)", opt, s);
        }
        end++;
        if (tolower((unsigned char)*end) == 'i')
            end++;
        if (tolower((unsigned char)*end) == 'b')
            end++;
    }
    if (*end)
        die("%s wants a number%s, not '%s'", opt, suffixes ? " (k, m, g suffixes)" : "", s);
    if (v > UINT64_MAX / mul)
        die("%s %s is out of range", opt, s);
    return (uint64_t)v * mul;
}

static void usage(FILE *f)
{
    fputs("usage: cxl-chase (--anon [--hugepages] | --path FILE [--offset BYTES]) [--size BYTES]\n"
          "                 [--stride BYTES] [--block BYTES|full] [--seed N] [--samples N]\n"
          "                 [--loads-per-sample M] [--cpu N] [--text] [--verify]\n"
          "  --anon              private anonymous memory (guest RAM, local DRAM)\n"
          "  --hugepages         with --anon: MAP_HUGETLB, else madvise(MADV_HUGEPAGE) (noted)\n"
          "  --path FILE         a file or device mapped MAP_SHARED read-write (/dev/shm file,\n"
          "                      uio device, PCI resource2, DAX device)\n"
          "  --offset BYTES      where the working set starts in FILE (a multiple of --stride)\n"
          "  --size BYTES        working set (default 256m; FILE: its size after --offset;\n"
          "                      a char device needs it); k, m, g suffixes\n"
          "  --stride BYTES      one pointer per STRIDE bytes (default 64: one per cache line)\n"
          "  --block BYTES|full  lines shuffled within blocks visited in random order\n"
          "                      (default 2m: one huge page); full: anywhere\n"
          "  --seed N            the chain's random seed (default 1)\n"
          "  --samples N         timed batches (default 50)\n"
          "  --loads-per-sample M  loads per batch (default 100000)\n"
          "  --cpu N             pin to CPU N first\n"
          "  --text              one human line instead of the JSON object\n"
          "  --verify            walk the chain once, check it visits every line once; exit 0/1\n"
          "exit: 0 ok, 1 --verify failed, 2 usage, open or map error\n", f);
}

static void parse(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){ .size = DEFAULT_SIZE, .stride = 64, .block = DEFAULT_BLOCK, .seed = 1,
                        .samples = 50, .loads = 100000, .cpu = -1, .break_at = -1 };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = true;

        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--anon")) {
            o->anon = true; takes = false;
        } else if (!strcmp(a, "--hugepages")) {
            o->hugepages = true; takes = false;
        } else if (!strcmp(a, "--text")) {
            o->text = true; takes = false;
        } else if (!strcmp(a, "--verify")) {
            o->verify = true; takes = false;
        } else if (strcmp(a, "--path") && strcmp(a, "--size") && strcmp(a, "--offset") &&
                   strcmp(a, "--stride") && strcmp(a, "--block") && strcmp(a, "--seed") &&
                   strcmp(a, "--samples") && strcmp(a, "--loads-per-sample") &&
                   strcmp(a, "--cpu") && strcmp(a, "--break-chain-for-test")) {
            die("unknown option '%s' (--help)", a);
        } else if (!v) {
            die("%s needs a value (--help)", a);
        } else if (!strcmp(a, "--path")) {
            if (!*v)
                die("--path wants a file name");
            o->path = v;
        } else if (!strcmp(a, "--size")) {
            o->size = parse_u64(a, v, true); o->size_given = true;
        } else if (!strcmp(a, "--offset")) {
            o->offset = parse_u64(a, v, true);
        } else if (!strcmp(a, "--stride")) {
            o->stride = parse_u64(a, v, true);
        } else if (!strcmp(a, "--block")) {
            if (!strcmp(v, "full"))
                o->block_full = true;
            else
                o->block = parse_u64(a, v, true);
            o->block_given = true;
        } else if (!strcmp(a, "--seed")) {
            o->seed = parse_u64(a, v, false);
        } else if (!strcmp(a, "--samples")) {
            o->samples = parse_u64(a, v, false);
        } else if (!strcmp(a, "--loads-per-sample")) {
            o->loads = parse_u64(a, v, false);
        } else if (!strcmp(a, "--cpu")) {
            uint64_t c = parse_u64(a, v, false);

            if (c >= CPU_SETSIZE)
                die("--cpu %s: no such CPU", v);
            o->cpu = (int)c;
        } else if (!strcmp(a, "--break-chain-for-test")) {
            o->break_at = (int64_t)parse_u64(a, v, false);
        }
        if (takes)
            i++;
    }
    if (o->anon == !!o->path)
        die("give exactly one of --anon and --path FILE (--help)");
    if (o->hugepages && o->path)
        die("--hugepages is for --anon; a file's pages are its filesystem's (use a hugetlbfs "
            "file or a DAX device for huge pages)");
    if (o->anon && o->offset)
        die("--offset is for --path");
    if (o->stride < sizeof(void *) || (o->stride & (o->stride - 1)))
        die("--stride %" PRIu64 ": must be a power of two and at least %zu (a pointer)",
            o->stride, sizeof(void *));
    if (o->samples == 0 || o->samples > 1000000)
        die("--samples %" PRIu64 ": must be 1..1000000", o->samples);
    if (o->loads == 0 || o->loads > (1ull << 40))
        die("--loads-per-sample %" PRIu64 ": must be 1..2^40", o->loads);
    if (o->offset % o->stride)
        die("--offset %" PRIu64 ": must be a multiple of --stride %" PRIu64, o->offset,
            o->stride);
    if (!o->block_given && o->block < o->stride)
        o->block = o->stride;
    if (!o->block_full && (o->block < o->stride || (o->block & (o->block - 1))))
        die("--block %" PRIu64 ": must be a power of two, at least --stride %" PRIu64
            ", or 'full'", o->block, o->stride);
}

/* ---- the machine ------------------------------------------------------------------------ */

static uint64_t read_size_file(const char *path)
{
    char buf[64];
    FILE *f = fopen(path, "r");
    uint64_t v = 0;
    char *end;

    if (!f)
        return 0;
    if (fgets(buf, sizeof(buf), f)) {
        v = strtoull(buf, &end, 10);
        if (*end == 'K')
            v <<= 10;
        else if (*end == 'M')
            v <<= 20;
        else if (*end == 'G')
            v <<= 30;
    }
    fclose(f);
    return v;
}

/* The last-level cache of cpu0: the highest level among its data and unified caches. */
static uint64_t llc_bytes(int *level_out)
{
    int best = 0;
    uint64_t size = 0;

    for (int i = 0; i < 16; i++) {
        char p[128], type[32] = "";
        FILE *f;
        int level;

        snprintf(p, sizeof(p), "/sys/devices/system/cpu/cpu0/cache/index%d/type", i);
        if (!(f = fopen(p, "r")))
            continue;
        if (!fgets(type, sizeof(type), f))
            type[0] = 0;
        fclose(f);
        if (!strncmp(type, "Instruction", 11))
            continue;
        snprintf(p, sizeof(p), "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
        level = (int)read_size_file(p);
        if (level > best) {
            snprintf(p, sizeof(p), "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
            best = level;
            size = read_size_file(p);
        }
    }
    *level_out = best;
    return size;
}

static uint64_t huge_page_size(void)
{
    char line[128];
    FILE *f = fopen("/proc/meminfo", "r");
    uint64_t kb = 0;

    if (f) {
        while (fgets(line, sizeof(line), f))
            if (sscanf(line, "Hugepagesize: %" SCNu64 " kB", &kb) == 1)
                break;
        fclose(f);
    }
    return kb ? kb << 10 : 2ull << 20;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- the memory --------------------------------------------------------------------------- */

struct region {
    char *map;          /* what mmap returned */
    size_t map_len;
    char *base;         /* the working set: base .. base + size */
    const char *hugepages;   /* "true", "false", "\"fallback\"" (JSON) */
};

static void map_anon(const struct opts *o, struct region *r)
{
    size_t len = o->size;

    r->hugepages = "false";
    if (o->hugepages) {
        uint64_t hp = huge_page_size();
        size_t hlen = (len + hp - 1) / hp * hp;

        r->map = mmap(NULL, hlen, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
        if (r->map != MAP_FAILED) {
            r->map_len = hlen;
            r->base = r->map;
            r->hugepages = "true";
            return;
        }
        note("MAP_HUGETLB failed (no huge pages reserved: vm.nr_hugepages); "
             "fell back to madvise(MADV_HUGEPAGE), transparent huge pages if the kernel gives them");
    }
    r->map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r->map == MAP_FAILED)
        die("cannot map %zu bytes of anonymous memory: %s (give a smaller --size)", len,
            strerror(errno));
    r->map_len = len;
    r->base = r->map;
    if (o->hugepages) {
        r->hugepages = "\"fallback\"";
        if (madvise(r->map, len, MADV_HUGEPAGE) != 0)
            note("madvise(MADV_HUGEPAGE) failed too: base pages only");
    }
}

static void map_path(struct opts *o, struct region *r)
{
    struct stat st;
    uint64_t avail = 0;
    bool known = false;
    long page = sysconf(_SC_PAGESIZE);
    uint64_t aligned;
    int fd = open(o->path, O_RDWR | O_CLOEXEC);

    if (fd < 0) {
        int e = errno;

        if (e == EACCES || e == EPERM || e == EROFS)
            die("cannot open %s read-write: %s (the chain is written into the mapping: run as a "
                "user who may write it, e.g. with sudo, or make it writable)", o->path,
                strerror(e));
        die("cannot open %s: %s (give an existing file or device)", o->path, strerror(e));
    }
    if (fstat(fd, &st) != 0)
        die("cannot stat %s: %s", o->path, strerror(errno));
    if (S_ISREG(st.st_mode)) {
        avail = (uint64_t)st.st_size;
        known = true;
    } else if (S_ISBLK(st.st_mode)) {
        if (ioctl(fd, BLKGETSIZE64, &avail) == 0)
            known = true;
    } else if (S_ISDIR(st.st_mode)) {
        die("%s is a directory (give a file or a device)", o->path);
    }
    if (known && avail == 0)
        die("%s has size 0 (give it the working set's size first, e.g. truncate -s 256M %s)",
            o->path, o->path);
    if (!known && !o->size_given)
        die("%s reports no size (a char device): give --size", o->path);
    if (known) {
        if (o->offset >= avail)
            die("--offset %" PRIu64 " is not inside %s (%" PRIu64 " bytes)", o->offset, o->path,
                avail);
        if (!o->size_given)
            o->size = avail - o->offset;
        else if (o->size > avail - o->offset)
            die("--offset %" PRIu64 " + --size %" PRIu64 " is beyond the end of %s (%" PRIu64
                " bytes): give a smaller --size or --offset", o->offset, o->size, o->path, avail);
    }
    if (o->size == 0)
        die("--size 0: the working set must be at least one page (%ld bytes)", page);
    aligned = o->offset / (uint64_t)page * (uint64_t)page;
    if (o->size > SIZE_MAX - (o->offset - aligned))
        die("--size %" PRIu64 " is too large for this machine", o->size);
    r->map_len = (size_t)(o->size + (o->offset - aligned));
    r->map = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)aligned);
    if (r->map == MAP_FAILED) {
        int e = errno;

        if (e == EACCES || e == EPERM)
            die("cannot map %s read-write: %s (the chain is written into the mapping: it must "
                "be writable, MAP_SHARED)", o->path, strerror(e));
        die("cannot map %s (%" PRIu64 " bytes at offset %" PRIu64 "): %s (check --size and "
            "--offset against the region)", o->path, o->size, o->offset, strerror(e));
    }
    close(fd);
    r->base = r->map + (o->offset - aligned);
    r->hugepages = "false";
}

/* ---- the chain ---------------------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rng(void)
{
    uint64_t x = rng_state;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [0, n), n >= 1 (rejection, no modulo bias). */
static uint64_t below(uint64_t n)
{
    uint64_t lim = UINT64_MAX - UINT64_MAX % n, x;

    do
        x = rng();
    while (x >= lim);
    return x % n;
}

/*
 * Link the lines: blocks in one random cycle (Sattolo), each block's lines in random order
 * (Fisher-Yates), a block's last line pointing at the next block's first. Every line is
 * visited once per lap. Returns the start: block 0's first line in its order.
 */
static void **build_chain(char *base, uint64_t lines, uint64_t stride, uint64_t per_block)
{
    uint64_t blocks = (lines + per_block - 1) / per_block;
    uint32_t *next_block = malloc(blocks * sizeof(*next_block));
    uint32_t *first = malloc(blocks * sizeof(*first));
    uint32_t *last = malloc(blocks * sizeof(*last));
    uint32_t *perm = malloc(per_block * sizeof(*perm));
    uint64_t b;
    void **start;

    if (!next_block || !first || !last || !perm)
        die("out of memory for the chain's index (%" PRIu64 " blocks of %" PRIu64 " lines)",
            blocks, per_block);
    /* Sattolo: a random permutation that is a single cycle (j < b: never itself). */
    for (b = 0; b < blocks; b++)
        next_block[b] = (uint32_t)b;
    for (b = blocks - 1; b > 0; b--) {
        uint64_t j = below(b);
        uint32_t t = next_block[b];

        next_block[b] = next_block[j];
        next_block[j] = t;
    }
    /* Each block: its lines shuffled (Fisher-Yates) and linked in that order. */
    for (b = 0; b < blocks; b++) {
        uint64_t n = b == blocks - 1 ? lines - b * per_block : per_block;
        uint64_t k;

        for (k = 0; k < n; k++)
            perm[k] = (uint32_t)k;
        for (k = n - 1; k > 0; k--) {
            uint64_t j = below(k + 1);
            uint32_t t = perm[k];

            perm[k] = perm[j];
            perm[j] = t;
        }
        for (k = 0; k + 1 < n; k++)
            *(void **)(base + (b * per_block + perm[k]) * stride) =
                base + (b * per_block + perm[k + 1]) * stride;
        first[b] = perm[0];
        last[b] = perm[n - 1];
    }
    /* Then each block's last line to the next block's first. */
    for (b = 0; b < blocks; b++) {
        uint64_t nb = next_block[b];

        *(void **)(base + (b * per_block + last[b]) * stride) =
            base + (nb * per_block + first[nb]) * stride;
    }
    start = (void **)(base + (uint64_t)first[0] * stride);
    free(next_block);
    free(first);
    free(last);
    free(perm);
    return start;
}

/* One lap from start: every step inside the set, on a line, never a line twice, back at start
 * after exactly `lines` steps. */
static int verify(char *base, uint64_t lines, uint64_t stride, void **start, uint64_t *steps)
{
    uint8_t *seen = calloc((lines + 7) / 8, 1);
    void **p = start;
    uint64_t n = 0;
    int ok = 0;

    if (!seen)
        die("out of memory for --verify's bitmap");
    for (;;) {
        uintptr_t off = (uintptr_t)p - (uintptr_t)base;
        uint64_t line;

        if ((uintptr_t)p < (uintptr_t)base || off >= lines * stride || off % stride)
            break;                          /* points outside the set or between lines */
        line = off / stride;
        if (seen[line / 8] & (1u << (line % 8)))
            break;                          /* a line twice before the start came back */
        seen[line / 8] |= (uint8_t)(1u << (line % 8));
        p = (void **)*p;
        n++;
        if (p == start) {
            ok = n == lines;
            break;
        }
        if (n > lines)
            break;
    }
    *steps = n;
    free(seen);
    return ok;
}

/* ---- the measurement ------------------------------------------------------------------------ */

static void *volatile sink;

static __attribute__((noinline)) void **chase(void **p, uint64_t n)
{
    uint64_t i;

    for (i = 0; i + 8 <= n; i += 8) {
        p = (void **)*p; p = (void **)*p; p = (void **)*p; p = (void **)*p;
        p = (void **)*p; p = (void **)*p; p = (void **)*p; p = (void **)*p;
    }
    for (; i < n; i++)
        p = (void **)*p;
    return p;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* Nearest rank: the smallest value with at least q of the samples at or below it. */
static double pct(const double *s, uint64_t n, double q)
{
    uint64_t k = (uint64_t)ceil(q * (double)n - 1e-9);    /* 0.9 * n is not always exact */

    return s[k ? k - 1 : 0];
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void json_list(const char *name, const char **v, int n)
{
    printf(", \"%s\": [", name);
    for (int i = 0; i < n; i++) {
        if (i)
            fputs(", ", stdout);
        json_str(v[i]);
    }
    putchar(']');
}

int main(int argc, char **argv)
{
    struct opts o;
    struct region r = { 0 };
    struct sigaction sa = { .sa_handler = on_fault };
    long page = sysconf(_SC_PAGESIZE);
    int llc_level;
    uint64_t llc, lines, per_block, t_build;
    void **start, **p;
    double *ns;

    parse(argc, argv, &o);
    if (o.size_given && o.size < (uint64_t)page)
        die("--size %" PRIu64 ": smaller than one page (%ld bytes); the chain needs a working "
            "set larger than the last-level cache", o.size, page);
    if (o.cpu >= 0) {
        cpu_set_t set;

        CPU_ZERO(&set);
        CPU_SET(o.cpu, &set);
        if (sched_setaffinity(0, sizeof(set), &set) != 0)
            die("cannot pin to CPU %d: %s (give one of the CPUs this process may use)", o.cpu,
                strerror(errno));
    }
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGSEGV, &sa, NULL);

    if (o.anon)
        map_anon(&o, &r);
    else
        map_path(&o, &r);
    if (o.size < (uint64_t)page)
        die("the working set (%" PRIu64 " bytes) is smaller than one page (%ld bytes): give "
            "--size, or a larger file", o.size, page);
    lines = o.size / o.stride;
    if (lines == 0)
        die("--stride %" PRIu64 " is larger than the working set (%" PRIu64 " bytes): give a "
            "smaller --stride", o.stride, o.size);
    if (lines > UINT32_MAX)
        die("--size / --stride = %" PRIu64 " lines: at most %u (give a larger --stride or a "
            "smaller --size)", lines, UINT32_MAX);
    if (o.block_full)
        o.block = lines * o.stride;
    per_block = o.block / o.stride;
    if (per_block > lines)
        per_block = lines;
    if ((lines + per_block - 1) / per_block > UINT32_MAX)
        die("too many blocks: give a larger --block");

    llc = llc_bytes(&llc_level);
    if (!llc)
        warn("the last-level cache's size is unknown (no /sys/devices/system/cpu/cpu0/cache): "
             "make sure --size is several times larger than it");
    else if (o.size < 4 * llc) {
        static char msg[200];

        snprintf(msg, sizeof(msg), "the working set (%" PRIu64 " bytes) is less than 4x the "
                 "L%d cache (%" PRIu64 " bytes): part of the chain is served by the cache",
                 o.size, llc_level, llc);
        warn(msg);
    }

    rng_state = o.seed * 0x9E3779B97F4A7C15ull + 0x853C49E6748FEA9Bull;
    if (!rng_state)
        rng_state = 1;
    t_build = now_ns();
    start = build_chain(r.base, lines, o.stride, per_block);
    t_build = now_ns() - t_build;
    if (o.break_at >= 0 && (uint64_t)o.break_at < lines) {
        void **slot = (void **)(r.base + (uint64_t)o.break_at * o.stride);

        *slot = slot;
    }

    if (o.verify) {
        uint64_t steps;
        int ok = verify(r.base, lines, o.stride, start, &steps);

        printf("{\"verify\": %s, \"lines\": %" PRIu64 ", \"steps\": %" PRIu64
               ", \"size_bytes\": %" PRIu64 ", \"stride\": %" PRIu64 ", \"block_bytes\": %"
               PRIu64 ", \"seed\": %" PRIu64 "}\n", ok ? "true" : "false", lines, steps, o.size,
               o.stride, per_block * o.stride, o.seed);
        if (!ok)
            fprintf(stderr, "cxl-chase: the chain is broken: %" PRIu64 " steps for %" PRIu64
                    " lines\n", steps, lines);
        return ok ? 0 : 1;
    }

    ns = malloc(o.samples * sizeof(*ns));
    if (!ns)
        die("out of memory for %" PRIu64 " samples", o.samples);
    p = chase(start, lines);                           /* warm-up: one lap */
    for (uint64_t s = 0; s < o.samples; s++) {
        uint64_t t0 = now_ns();

        p = chase(p, o.loads);
        ns[s] = (double)(now_ns() - t0) / (double)o.loads;
    }
    sink = p;

    {
        double sum = 0, *sorted = ns;

        for (uint64_t s = 0; s < o.samples; s++)
            sum += ns[s];
        qsort(sorted, o.samples, sizeof(*sorted), cmp_double);
        double st[6] = { sorted[0], pct(sorted, o.samples, 0.50), pct(sorted, o.samples, 0.90),
                         pct(sorted, o.samples, 0.99), sorted[o.samples - 1],
                         sum / (double)o.samples };

        if (o.text) {
            printf("cxl-chase: %s%s %" PRIu64 " bytes, stride %" PRIu64 ", block %" PRIu64
                   ", hugepages %s: %.1f ns/load p50 (min %.1f p90 %.1f p99 %.1f max %.1f mean "
                   "%.1f; %" PRIu64 " x %" PRIu64 " loads; LLC %" PRIu64 " bytes)\n",
                   o.anon ? "anon" : "path ", o.anon ? "" : o.path, o.size, o.stride,
                   per_block * o.stride, r.hugepages[0] == '"' ? "fallback" : r.hugepages,
                   st[1], st[0], st[2], st[3], st[4], st[5], o.samples, o.loads, llc);
        } else {
            fputs("{\"source\": ", stdout);
            json_str(o.anon ? "anon" : "path");
            fputs(", \"path\": ", stdout);
            if (o.path)
                json_str(o.path);
            else
                fputs("null", stdout);
            printf(", \"offset\": %" PRIu64 ", \"size_bytes\": %" PRIu64 ", \"stride\": %" PRIu64
                   ", \"block_bytes\": %" PRIu64 ", \"lines\": %" PRIu64 ", \"seed\": %" PRIu64
                   ", \"hugepages\": %s, \"llc_bytes\": ", o.offset, o.size, o.stride,
                   per_block * o.stride, lines, o.seed, r.hugepages);
            if (llc)
                printf("%" PRIu64 ", \"llc_level\": %d", llc, llc_level);
            else
                fputs("null, \"llc_level\": null", stdout);
            printf(", \"cpu\": ");
            if (o.cpu >= 0)
                printf("%d", o.cpu);
            else
                fputs("null", stdout);
            printf(", \"samples\": %" PRIu64 ", \"loads_per_sample\": %" PRIu64
                   ", \"total_loads\": %" PRIu64 ", \"warmup_loads\": %" PRIu64
                   ", \"build_ms\": %.1f, \"ns_per_load\": {\"min\": %.2f, \"p50\": %.2f, "
                   "\"p90\": %.2f, \"p99\": %.2f, \"max\": %.2f, \"mean\": %.2f}",
                   o.samples, o.loads, o.samples * o.loads, lines, (double)t_build / 1e6,
                   st[0], st[1], st[2], st[3], st[4], st[5]);
            json_list("notes", notes, n_notes);
            json_list("warnings", warnings, n_warnings);
            fputs(", \"end\": ", stdout);
            printf("\"%p\"}\n", sink);
        }
    }
    free(ns);
    munmap(r.map, r.map_len);
    return 0;
}
