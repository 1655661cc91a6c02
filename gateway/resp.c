/*
 * resp.c - RESP2 command reader and reply check for cxl-gateway (resp.h).
 */
#include "resp.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#define ERR(...) snprintf(err, errlen, __VA_ARGS__)

/*
 * A decimal integer filling p[0, n) exactly (optional '-', at most 18 digits).
 * 0 on success.
 */
static int parse_ll(const uint8_t *p, size_t n, long long *out)
{
    long long v = 0;
    size_t i = 0;
    int neg = 0;

    if (n && p[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i == n || n - i > 18)
        return -1;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    *out = neg ? -v : v;
    return 0;
}

/*
 * The number line at buf[pos] (after its type byte): "<digits>\r\n". 1 with *val and
 * *next set, 0 incomplete, -1 malformed.
 */
static int number_line(const uint8_t *buf, size_t len, size_t pos, long long *val,
                       size_t *next)
{
    size_t avail = len - pos, scan = avail < RESP_MAX_NUMLINE ? avail : RESP_MAX_NUMLINE;
    const uint8_t *cr = memchr(buf + pos, '\r', scan);

    if (!cr)
        return avail >= RESP_MAX_NUMLINE ? -1 : 0;
    if ((size_t)(cr - buf) + 1 >= len)
        return 0;                       /* the '\n' has not arrived */
    if (cr[1] != '\n' || parse_ll(buf + pos, (size_t)(cr - (buf + pos)), val))
        return -1;
    *next = (size_t)(cr - buf) + 2;
    return 1;
}

static int is_space(uint8_t ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* An inline command: one line, words split on blanks (no quoting). */
static int parse_inline(const uint8_t *buf, size_t len, const struct resp_limits *lim,
                        struct resp_cmd *cmd, size_t *used, char *err, size_t errlen)
{
    size_t scan = len < RESP_MAX_INLINE ? len : RESP_MAX_INLINE;
    const uint8_t *nl = memchr(buf, '\n', scan);
    size_t end, i = 0;
    uint64_t msg = 16;

    if (!nl) {
        if (len >= RESP_MAX_INLINE) {
            ERR("too big inline request");
            return RESP_ERROR;
        }
        return RESP_INCOMPLETE;
    }
    end = (size_t)(nl - buf);
    cmd->argc = 0;
    while (i < end) {
        size_t start;

        while (i < end && is_space(buf[i]))
            i++;
        if (i == end)
            break;
        start = i;
        while (i < end && !is_space(buf[i]))
            i++;
        if (cmd->argc == lim->max_args) {
            ERR("more than %u arguments in an inline request", lim->max_args);
            return RESP_ERROR;
        }
        if (i - start > lim->max_bulk) {
            ERR("inline argument of %zu bytes (over the ring's max_value_size %u)",
                i - start, lim->max_bulk);
            return RESP_ERROR;
        }
        msg += 4 + (uint64_t)(i - start);
        if (msg > lim->max_msg) {
            ERR("command larger than the ring's max_msg_size %llu",
                (unsigned long long)lim->max_msg);
            return RESP_ERROR;
        }
        cmd->argv[cmd->argc] = buf + start;
        cmd->argl[cmd->argc] = (uint32_t)(i - start);
        cmd->argc++;
    }
    *used = end + 1;
    return RESP_COMMAND;
}

int resp_parse_command(const uint8_t *buf, size_t len, const struct resp_limits *lim,
                       struct resp_cmd *cmd, size_t *used, char *err, size_t errlen)
{
    long long n, blen;
    uint64_t msg = 16;                  /* the ring message's header (CXL_MSG_HDR_SIZE) */
    size_t pos;
    uint32_t i;
    int rc;

    if (!len)
        return RESP_INCOMPLETE;
    if (buf[0] != '*')
        return parse_inline(buf, len, lim, cmd, used, err, errlen);
    rc = number_line(buf, len, 1, &n, &pos);
    if (rc <= 0) {
        if (rc < 0)
            ERR("invalid multibulk length");
        return rc < 0 ? RESP_ERROR : RESP_INCOMPLETE;
    }
    if (n < 0) {
        ERR("invalid multibulk length");
        return RESP_ERROR;
    }
    if ((unsigned long long)n > lim->max_args) {
        ERR("invalid multibulk length (more than %u arguments)", lim->max_args);
        return RESP_ERROR;
    }
    cmd->argc = 0;
    for (i = 0; i < (uint32_t)n; i++) {
        if (pos >= len)
            return RESP_INCOMPLETE;
        if (buf[pos] != '$') {
            uint8_t ch = buf[pos];

            if (ch >= 0x20 && ch < 0x7f && ch != '\'')
                ERR("expected '$', got '%c'", ch);
            else
                ERR("expected '$', got byte 0x%02x", ch);
            return RESP_ERROR;
        }
        rc = number_line(buf, len, pos + 1, &blen, &pos);
        if (rc <= 0) {
            if (rc < 0)
                ERR("invalid bulk length");
            return rc < 0 ? RESP_ERROR : RESP_INCOMPLETE;
        }
        if (blen < 0) {
            ERR("invalid bulk length");
            return RESP_ERROR;
        }
        if ((unsigned long long)blen > lim->max_bulk) {
            ERR("invalid bulk length %lld (over the ring's max_value_size %u)", blen,
                lim->max_bulk);
            return RESP_ERROR;
        }
        msg += 4 + (uint64_t)blen;
        if (msg > lim->max_msg) {
            ERR("command larger than the ring's max_msg_size %llu",
                (unsigned long long)lim->max_msg);
            return RESP_ERROR;
        }
        if (len - pos < (size_t)blen + 2)
            return RESP_INCOMPLETE;
        if (buf[pos + (size_t)blen] != '\r' || buf[pos + (size_t)blen + 1] != '\n') {
            ERR("bulk argument not terminated by CRLF");
            return RESP_ERROR;
        }
        cmd->argv[i] = buf + pos;
        cmd->argl[i] = (uint32_t)blen;
        pos += (size_t)blen + 2;
    }
    cmd->argc = (uint32_t)n;
    *used = pos;
    return RESP_COMMAND;
}

/* The end of the line starting at pos: the index of its '\r' (followed by '\n'), or -1. */
static long long line_end(const uint8_t *buf, size_t len, size_t pos)
{
    const uint8_t *cr;

    if (pos >= len)
        return -1;
    cr = memchr(buf + pos, '\r', len - pos);
    if (!cr || (size_t)(cr - buf) + 1 >= len || cr[1] != '\n')
        return -1;
    return cr - buf;
}

long resp_reply_span(const uint8_t *buf, size_t len)
{
    uint64_t remaining = 1;             /* values still to read, arrays' elements included */
    size_t pos = 0;

    while (remaining) {
        long long end, n;
        uint8_t type;

        if (pos >= len)
            return -1;
        type = buf[pos];
        end = line_end(buf, len, pos + 1);
        if (end < 0)
            return -1;
        switch (type) {
        case '+':
        case '-':
            pos = (size_t)end + 2;
            break;
        case ':':
            if (parse_ll(buf + pos + 1, (size_t)end - pos - 1, &n))
                return -1;
            pos = (size_t)end + 2;
            break;
        case '$':
            if (parse_ll(buf + pos + 1, (size_t)end - pos - 1, &n) || n < -1)
                return -1;
            pos = (size_t)end + 2;
            if (n >= 0) {
                if ((unsigned long long)n + 2 > len - pos || buf[pos + (size_t)n] != '\r' ||
                    buf[pos + (size_t)n + 1] != '\n')
                    return -1;
                pos += (size_t)n + 2;
            }
            break;
        case '*':
            if (parse_ll(buf + pos + 1, (size_t)end - pos - 1, &n) || n < -1 ||
                (n > 0 && (unsigned long long)n > len))
                return -1;
            pos = (size_t)end + 2;
            if (n > 0)
                remaining += (uint64_t)n;
            if (remaining > len)
                return -1;
            break;
        default:
            return -1;
        }
        remaining--;
    }
    return pos <= (size_t)LONG_MAX ? (long)pos : -1;
}

int resp_check_reply(const uint8_t *buf, size_t len)
{
    long n = resp_reply_span(buf, len);

    return n >= 0 && (size_t)n == len ? 0 : -1;
}
