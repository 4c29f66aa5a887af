/* status.c: status codes to messages. C owns the words; Python maps codes
 * to exception classes in one place (pyllama_q/errors.py). */
#include "pq.h"

const char *pq_status_str(int status) {
    switch (status) {
    case PQ_OK: return "ok";
    case PQ_ERR_NOMEM: return "out of memory";
    case PQ_ERR_ARG: return "invalid argument";
    case PQ_ERR_TYPE: return "unsupported tensor type";
    case PQ_ERR_SHAPE: return "tensor shape does not match the model's hyperparameters";
    case PQ_ERR_MISSING: return "a required tensor is missing";
    case PQ_ERR_CTX_FULL: return "context is full";
    case PQ_ERR_CANCELLED: return "cancelled";
    case PQ_ERR_THREAD: return "could not start worker threads";
    case PQ_ERR_UNSUPPORTED: return "not supported by this CPU or build";
    case PQ_ERR_STATE: return "saved state does not match this model or session";
    default: return "unknown error";
    }
}
