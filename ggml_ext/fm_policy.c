/* fm_policy_get: the cache modes of fm_types.h and the policies that implement them. */
#include "fm_policy.h"

#include "fm_types.h"

const fm_policy_ops *fm_policy_get(int mode) {
    switch (mode) {
    case FM_CACHE_LFU: return &fm_policy_lfu;
    case FM_CACHE_LRU: return &fm_policy_lru;
    case FM_CACHE_OS: return &fm_policy_os;
    case FM_CACHE_LRFU: return &fm_policy_lrfu;
    case FM_CACHE_HAZARD: return &fm_policy_hazard;
    default: return NULL;
    }
}
