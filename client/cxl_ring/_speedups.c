/*
 * cxl_ring._speedups: an optional C core for the unpipelined GET/SET round trip.
 *
 * Never required: channel.py uses it only when it imports (and CXL_RING_PURE is unset), and
 * the pure-Python Session is the reference. SessionCore is a base class of channel.FastSession;
 * it holds the session's private ring indexes (req_head, resp_tail, next_id, req_tail_seen,
 * req_scrubbed),
 * the epoch it was acknowledged under and the broken flag as members, so the Python methods
 * (transact, _read, _wait_one, ...) and these C methods share one copy of the state.
 *
 * get()/set() do exactly what Session.get()/set() do on their fast path (docs/ring-protocol.md
 * sections 3 and 4): pack the request straight into the request ring when it does not wrap
 * and fits, publish req_head (release), spin a bounded time for resp_head (acquire), copy the
 * response header once into locals, validate it, copy the payload once, store resp_tail
 * (release), then zero the request's bytes (the server stored req_tail before the response:
 * docs/ring-protocol.md 3.1). Request ids carry the session generation in their high half
 * (next_id is set by Python at the ack, section 4.3). Anything else - a session or server problem, a response already waiting before
 * the request (unsolicited), a wrap, a full ring, an argument
 * that is not exactly bytes, a response that is not the single whole expected message, a wait
 * longer than the spin - is handed to the pure-Python code (_pure_get/_pure_set before
 * publishing, _wait_one after), which raises or waits exactly as without this module.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <linux/futex.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the ring layout is little-endian; this core reads it with native loads"
#endif

#define OFF_SERVER_EPOCH 128
#define OFF_SERVER_STATE 144
#define OFF_SERVER_SLEEPING 152
#define OFF_NOTIFY_KIND 156
#define NOTIFY_FUTEX 1
#define NOTIFY_DOORBELL 2
#define SERVER_RUNNING 2
#define OP_GET 1
#define OP_SET 2
#define FLAG_TTL 1
#define ST_PROTOCOL_ERROR 7
#define SPIN_NS 10000 /* like the Python spin: ~10 us, then _wait_one yields and sleeps */
/* What channel.py expects of this core; bumped whenever its behaviour changes, so that a
 * stale build (pip install -e . is not rerun by every checkout) is not used. 2: refuses a
 * response waiting before the request (unsolicited). 3: layout 4, ids carry the session
 * generation, request bytes are zeroed once answered. 4: notifies a sleeping server (N2).
 * 5: rings the doorbell of a server that sleeps behind one (notify_kind 2, through
 * FastSession._ring_doorbell, so both paths share one lazily opened notify.Doorbell).
 * 6: spins delay_ns before reading a new response (the injected far-memory delay, 2.4). */
#define CORE_VERSION 6
/* channel.py's session.SEQ_RENEW: past it Python claims again before the ids' low half wraps */
#define SEQ_RENEW 0xF0000000ull

typedef struct {
    PyObject_HEAD
    /* shared state the Python side reads and writes too (members) */
    unsigned long long req_head, resp_tail, next_id, req_tail_seen, req_scrubbed, epoch;
    unsigned int delay_ns;              /* access_delay_ns at the ack (section 2.4) */
    char broken;
    /* the mapping and the geometry, set by _bind */
    Py_buffer view;
    int bound;
    unsigned char *req_data, *resp_data;
    uint64_t *ack, *req_head_p, *resp_tail_p, *req_tail_p, *resp_head_p;
    uint64_t *server_epoch;
    uint32_t *server_state;
    uint32_t *server_sleeping, *notify_kind, *req_wake;  /* section 8; req_wake NULL: none */
    uint64_t token, req_size, resp_size, max_msg, max_value;
} SessionCore;

static PyObject *str_pure_get, *str_pure_set, *str_wait_one, *str_ring_doorbell;

static inline uint64_t load_acquire(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_release(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* N2 (docs/ring-protocol.md section 8), after P1: a full fence, then wake a sleeping server
 * (pairs with the server's N1): notify_kind futex, bump the group's req_wake and FUTEX_WAKE
 * on it; notify_kind doorbell, FastSession._ring_doorbell() writes to the client's doorbell
 * (notify.Doorbell: opened lazily, shared with the pure-Python path). Nothing is raised:
 * a notification that cannot be made leaves the request to the server's sleep_max_ms. */
static void notify_server(SessionCore *self)
{
    uint32_t kind;

    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!__atomic_load_n(self->server_sleeping, __ATOMIC_RELAXED))
        return;
    kind = __atomic_load_n(self->notify_kind, __ATOMIC_RELAXED);
    if (kind == NOTIFY_DOORBELL) {
        PyObject *r = PyObject_CallMethodObjArgs((PyObject *)self, str_ring_doorbell, NULL);

        if (r)
            Py_DECREF(r);
        else
            PyErr_Clear();
        return;
    }
    if (!self->req_wake || kind != NOTIFY_FUTEX)
        return;
    __atomic_fetch_add(self->req_wake, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, self->req_wake, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void core_unbind(SessionCore *self)
{
    if (self->bound) {
        self->bound = 0;
        PyBuffer_Release(&self->view);
    }
}

static void core_dealloc(SessionCore *self)
{
    core_unbind(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* _bind(buffer, client_section, server_section, req_size, resp_size, max_msg, max_value,
 *       token[, wake]): map the session's fields; every offset is checked against the
 *       buffer. wake: offset of the group's req_wake word (section 8), 0 for none. */
static PyObject *core_bind(SessionCore *self, PyObject *args)
{
    PyObject *obj;
    unsigned long long cs, ss, req_size, resp_size, max_msg, max_value, token, wake = 0;
    if (!PyArg_ParseTuple(args, "OKKKKKKK|K", &obj, &cs, &ss, &req_size, &resp_size, &max_msg,
                          &max_value, &token, &wake))
        return NULL;
    core_unbind(self);
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    uint64_t len = (uint64_t)self->view.len;
    unsigned char *base = self->view.buf;
    if ((uintptr_t)base % 4096 || cs < 4096 || ss < 4096 || cs % 4096 || ss % 4096 || req_size < 4096 ||
        resp_size < 4096 || (req_size & (req_size - 1)) || (resp_size & (resp_size - 1)) ||
        cs > len || len - cs < 4096 + req_size || ss > len || len - ss < 4096 + resp_size ||
        max_msg < 16 || max_msg > resp_size || (wake && (wake % 8 || wake < 4096 || wake > len - 8))) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, "session geometry outside the mapping");
        return NULL;
    }
    self->ack = (uint64_t *)(base + ss);
    self->req_tail_p = (uint64_t *)(base + ss + 64);
    self->resp_head_p = (uint64_t *)(base + ss + 128);
    self->resp_data = base + ss + 4096;
    self->req_head_p = (uint64_t *)(base + cs + 64);
    self->resp_tail_p = (uint64_t *)(base + cs + 128);
    self->req_data = base + cs + 4096;
    self->server_state = (uint32_t *)(base + OFF_SERVER_STATE);
    self->server_epoch = (uint64_t *)(base + OFF_SERVER_EPOCH);
    self->server_sleeping = (uint32_t *)(base + OFF_SERVER_SLEEPING);
    self->notify_kind = (uint32_t *)(base + OFF_NOTIFY_KIND);
    self->req_wake = wake ? (uint32_t *)(base + wake) : NULL;
    self->req_size = req_size;
    self->resp_size = resp_size;
    self->max_msg = max_msg;
    self->max_value = max_value;
    self->token = token;
    self->bound = 1;
    Py_RETURN_NONE;
}

static PyObject *core_unbind_py(SessionCore *self, PyObject *unused)
{
    (void)unused;
    core_unbind(self);
    Py_RETURN_NONE;
}

/* Can a message of `step` bytes go at req_head without wrapping, into free space? */
static int request_fits(SessionCore *self, uint64_t step)
{
    uint64_t off = self->req_head & (self->req_size - 1);
    if (off + step > self->req_size)
        return 0;
    if (step <= self->req_size - (self->req_head - self->req_tail_seen))
        return 1;
    uint64_t tail = load_acquire(self->req_tail_p);              /* P0 */
    uint64_t used = self->req_head - tail;
    if (used > self->req_size)
        return 0;        /* corrupt: the Python path raises ProtocolError */
    self->req_tail_seen = tail;
    return step <= self->req_size - used;
}

/* Session and server checks before a request; 0 means "let Python decide (and raise)".
 * A retired session (ack_token != token) or a new server (server_epoch changed, section 7)
 * goes to Python, which raises SessionLost: the transport claims again, and the new Session
 * adopts its indexes from shared memory; nothing cached here outlives the session.
 * With nothing in flight the response ring must be empty (resp_head == resp_tail, C1): a
 * response already there was never asked for, and Python raises ProtocolError for it
 * (Session.check_idle) instead of this path taking it as the answer to the next request. */
static inline int session_ready(SessionCore *self)
{
    return self->bound && !self->broken && load_acquire(self->ack) == self->token &&
           __atomic_load_n(self->server_state, __ATOMIC_ACQUIRE) == SERVER_RUNNING &&
           __atomic_load_n(self->server_epoch, __ATOMIC_ACQUIRE) == self->epoch &&
           (self->next_id & 0xffffffffull) < SEQ_RENEW &&
           load_acquire(self->resp_head_p) == self->resp_tail;
}

static inline void put_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put_u64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

static unsigned char *put_header(unsigned char *p, uint32_t n, int op, int flags, int argc,
                                 uint64_t id)
{
    put_u32(p, n);
    p[4] = (unsigned char)op;
    p[5] = (unsigned char)flags;
    p[6] = (unsigned char)(argc & 0xff);
    p[7] = (unsigned char)(argc >> 8);
    put_u64(p + 8, id);
    return p + 16;
}

/* With every response in, zero the request bytes since the last scrub (Session._scrub_idle). */
static void scrub_idle(SessionCore *self)
{
    uint64_t n = self->req_head - self->req_scrubbed;
    uint64_t off = self->req_scrubbed & (self->req_size - 1), first = self->req_size - off;

    if (n >= self->req_size) {
        memset(self->req_data, 0, self->req_size);
    } else if (n) {
        if (first > n)
            first = n;
        memset(self->req_data + off, 0, first);
        if (n > first)
            memset(self->req_data, 0, n - first);
    }
    self->req_scrubbed = self->req_head;
}

static PyObject *wait_in_python(SessionCore *self, uint64_t rid, PyObject *timeout)
{
    PyObject *id = PyLong_FromUnsignedLongLong(rid);
    if (id == NULL)
        return NULL;
    PyObject *r = PyObject_CallMethodObjArgs((PyObject *)self, str_wait_one, id, timeout, NULL);
    Py_DECREF(id);
    if (r == NULL)
        return NULL;
    /* a protocol.Response (status, id, payload) -> (status, payload) */
    PyObject *out = NULL;
    if (PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 3)
        out = PyTuple_Pack(2, PyTuple_GET_ITEM(r, 0), PyTuple_GET_ITEM(r, 2));
    else
        PyErr_SetString(PyExc_TypeError, "_wait_one did not return a Response");
    Py_DECREF(r);
    return out;
}

/* Publish up to the new head, wait for one response to `rid`: (status, payload). */
static PyObject *complete(SessionCore *self, uint64_t step, uint64_t rid, PyObject *timeout)
{
    self->req_head += step;
    store_release(self->req_head_p, self->req_head);              /* P1 */
    notify_server(self);                                          /* N2, pairs with N1 */
    uint64_t tail = self->resp_tail, head = tail;
    uint64_t deadline = 0;
    for (unsigned spins = 0;; spins++) {
        head = load_acquire(self->resp_head_p);                   /* C1 */
        if (head != tail) {
            if (self->delay_ns) {                                 /* section 2.4 */
                uint64_t until = now_ns() + self->delay_ns;
                while (now_ns() < until)
                    cpu_relax();
            }
            break;
        }
        if ((spins & 63) == 63) {
            uint64_t t = now_ns();
            if (deadline == 0)
                deadline = t + SPIN_NS;
            else if (t > deadline)
                return wait_in_python(self, rid, timeout);
        }
        cpu_relax();
    }
    uint64_t used = head - tail;
    uint64_t off = tail & (self->resp_size - 1);
    if (off + 16 > self->resp_size)
        return wait_in_python(self, rid, timeout);
    /* one private copy of the header (two 8-byte loads), then validate the copy */
    const uint64_t *hp = (const uint64_t *)(self->resp_data + off);
    uint64_t w0 = __atomic_load_n(hp, __ATOMIC_RELAXED);
    uint64_t w1 = __atomic_load_n(hp + 1, __ATOMIC_RELAXED);
    uint64_t n = w0 & 0xffffffffu;
    unsigned status = (unsigned)(w0 >> 32) & 0xff;
    if (n < 16 || n > self->max_msg || ((n + 7) & ~(uint64_t)7) != used ||
        off + n > self->resp_size || status >= ST_PROTOCOL_ERROR || w1 != rid)
        return wait_in_python(self, rid, timeout);   /* the general reader judges it */
    PyObject *payload = PyBytes_FromStringAndSize((const char *)self->resp_data + off + 16,
                                                  (Py_ssize_t)(n - 16));
    if (payload == NULL)
        return NULL;   /* nothing consumed: the session stays usable */
    self->resp_tail = head;
    store_release(self->resp_tail_p, head);                       /* C2 */
    scrub_idle(self);
    PyObject *st = PyLong_FromLong((long)status);
    if (st == NULL) {
        Py_DECREF(payload);
        return NULL;
    }
    PyObject *out = PyTuple_New(2);
    if (out == NULL) {
        Py_DECREF(st);
        Py_DECREF(payload);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, st);
    PyTuple_SET_ITEM(out, 1, payload);
    return out;
}

static PyObject *fallback(SessionCore *self, PyObject *name, PyObject *const *args,
                          Py_ssize_t nargs)
{
    PyObject *stack[5];
    stack[0] = (PyObject *)self;
    for (Py_ssize_t i = 0; i < nargs; i++)
        stack[i + 1] = args[i];
    return PyObject_VectorcallMethod(name, stack, (size_t)nargs + 1, NULL);
}

/* get(key, timeout) -> (status, payload) | None, as Session.get */
static PyObject *core_get(SessionCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "get(key, timeout)");
        return NULL;
    }
    PyObject *key = args[0];
    if (!PyBytes_CheckExact(key) || !session_ready(self))
        return fallback(self, str_pure_get, args, nargs);
    uint64_t klen = (uint64_t)PyBytes_GET_SIZE(key);
    uint64_t n = 20 + klen, step = (n + 7) & ~(uint64_t)7;
    if (klen > self->max_value || !request_fits(self, step))
        return fallback(self, str_pure_get, args, nargs);
    uint64_t rid = self->next_id++;
    unsigned char *p = self->req_data + (self->req_head & (self->req_size - 1));
    p = put_header(p, (uint32_t)n, OP_GET, 0, 1, rid);
    put_u32(p, (uint32_t)klen);
    memcpy(p + 4, PyBytes_AS_STRING(key), klen);
    memset(p + 4 + klen, 0, step - n);
    return complete(self, step, rid, args[1]);
}

/* set(key, value, ttl_ms, timeout) -> (status, payload) | None, as Session.set */
static PyObject *core_set(SessionCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "set(key, value, ttl_ms, timeout)");
        return NULL;
    }
    PyObject *key = args[0], *value = args[1];
    if (!PyBytes_CheckExact(key) || !PyBytes_CheckExact(value) || !PyLong_CheckExact(args[2]) ||
        !session_ready(self))
        return fallback(self, str_pure_set, args, nargs);
    unsigned long long ttl = PyLong_AsUnsignedLongLong(args[2]);
    if (ttl == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();   /* negative or too large: the Python path reports it */
        return fallback(self, str_pure_set, args, nargs);
    }
    uint64_t klen = (uint64_t)PyBytes_GET_SIZE(key), vlen = (uint64_t)PyBytes_GET_SIZE(value);
    uint64_t n = (ttl ? 32 : 24) + klen + vlen, step = (n + 7) & ~(uint64_t)7;
    if (klen > self->max_value || vlen > self->max_value || n > self->max_msg ||
        !request_fits(self, step))
        return fallback(self, str_pure_set, args, nargs);
    uint64_t rid = self->next_id++;
    unsigned char *p = self->req_data + (self->req_head & (self->req_size - 1));
    p = put_header(p, (uint32_t)n, OP_SET, ttl ? FLAG_TTL : 0, 2, rid);
    if (ttl) {
        put_u64(p, ttl);
        p += 8;
    }
    put_u32(p, (uint32_t)klen);
    memcpy(p + 4, PyBytes_AS_STRING(key), klen);
    p += 4 + klen;
    put_u32(p, (uint32_t)vlen);
    memcpy(p + 4, PyBytes_AS_STRING(value), vlen);
    memset(p + 4 + vlen, 0, step - n);
    return complete(self, step, rid, args[3]);
}

static PyMethodDef core_methods[] = {
    {"get", (PyCFunction)(void (*)(void))core_get, METH_FASTCALL,
     "get(key, timeout) -> (status, payload) or None: Session.get in C"},
    {"set", (PyCFunction)(void (*)(void))core_set, METH_FASTCALL,
     "set(key, value, ttl_ms, timeout) -> (status, payload) or None: Session.set in C"},
    {"_bind", (PyCFunction)core_bind, METH_VARARGS, "map the session's fields in a buffer"},
    {"_unbind", (PyCFunction)core_unbind_py, METH_NOARGS, "release the buffer"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef core_members[] = {
    {"req_head", T_ULONGLONG, offsetof(SessionCore, req_head), 0, "request producer index"},
    {"resp_tail", T_ULONGLONG, offsetof(SessionCore, resp_tail), 0, "response consumer index"},
    {"next_id", T_ULONGLONG, offsetof(SessionCore, next_id), 0, "id of the next request"},
    {"req_scrubbed", T_ULONGLONG, offsetof(SessionCore, req_scrubbed), 0,
     "request bytes below this are zero"},
    {"req_tail_seen", T_ULONGLONG, offsetof(SessionCore, req_tail_seen), 0,
     "the server's req_tail at the last look"},
    {"epoch", T_ULONGLONG, offsetof(SessionCore, epoch), 0,
     "the server_epoch the session was acknowledged under"},
    {"delay_ns", T_UINT, offsetof(SessionCore, delay_ns), 0,
     "the injected far-memory delay, spun before reading a new response"},
    {"broken", T_BOOL, offsetof(SessionCore, broken), 0, "the session must not be used"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SessionCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cxl_ring._speedups.SessionCore",
    .tp_basicsize = sizeof(SessionCore),
    .tp_dealloc = (destructor)core_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "C state and fast GET/SET of a ring session (base class of channel.FastSession)",
    .tp_methods = core_methods,
    .tp_members = core_members,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "cxl_ring._speedups",
    "Optional C core of the unpipelined ring round trip (see channel.py).", -1, NULL, NULL,
    NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    if (PyType_Ready(&SessionCoreType) < 0)
        return NULL;
    str_pure_get = PyUnicode_InternFromString("_pure_get");
    str_pure_set = PyUnicode_InternFromString("_pure_set");
    str_wait_one = PyUnicode_InternFromString("_wait_one");
    str_ring_doorbell = PyUnicode_InternFromString("_ring_doorbell");
    if (!str_pure_get || !str_pure_set || !str_wait_one || !str_ring_doorbell)
        return NULL;
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "CORE_VERSION", CORE_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SessionCoreType);
    if (PyModule_AddObject(m, "SessionCore", (PyObject *)&SessionCoreType) < 0) {
        Py_DECREF(&SessionCoreType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
