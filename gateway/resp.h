/*
 * resp.h - the RESP2 side of cxl-gateway: an incremental reader of client commands
 * (multibulk arrays and inline commands, as Redis reads them) and a check that a CMD
 * reply from the ring is exactly one well-formed RESP2 reply.
 *
 * Buffer handling only, no sockets, no allocation. Every length a client sends is
 * checked before it is used; a command never needs more than the limits below.
 */
#ifndef CXL_GATEWAY_RESP_H
#define CXL_GATEWAY_RESP_H

#include <stddef.h>
#include <stdint.h>

#define RESP_MAX_INLINE   (64u * 1024u)    /* Redis' PROTO_INLINE_MAX_SIZE */
#define RESP_MAX_NUMLINE  32u              /* "*<n>\r\n" / "$<n>\r\n": digits and sign */

struct resp_limits {
    uint32_t max_args;          /* arguments per command (the ring's CXL_MAX_ARGS) */
    uint32_t max_bulk;          /* bytes per argument (the region's max_value_size) */
    uint64_t max_msg;           /* the ring message a command becomes (max_msg_size) */
};

struct resp_cmd {
    uint32_t argc;              /* 0: an empty command (blank line, "*0"): skip it */
    const uint8_t **argv;       /* max_args entries, pointing into the parsed buffer */
    uint32_t *argl;
};

enum resp_rc {
    RESP_INCOMPLETE = 0,        /* the buffer ends inside a command: read more */
    RESP_COMMAND    = 1,        /* one command parsed, *used bytes consumed */
    RESP_ERROR      = -1,       /* bytes that can never be a command: err says why */
};

/*
 * Read one command at buf[0, len). RESP_COMMAND: cmd is filled (its pointers point into
 * buf) and *used is its size in bytes. RESP_INCOMPLETE: nothing consumed. RESP_ERROR: err
 * holds Redis' wording ("invalid multibulk length", ...), without "Protocol error: ".
 */
int resp_parse_command(const uint8_t *buf, size_t len, const struct resp_limits *lim,
                       struct resp_cmd *cmd, size_t *used, char *err, size_t errlen);

/* 0 when buf[0, len) is exactly one complete RESP2 reply, -1 otherwise. */
int resp_check_reply(const uint8_t *buf, size_t len);

/* The length of the one complete RESP2 reply that buf[0, len) begins with; -1 when it does
 * not begin with one (the pub/sub confirmations come several in one payload). */
long resp_reply_span(const uint8_t *buf, size_t len);

#endif /* CXL_GATEWAY_RESP_H */
