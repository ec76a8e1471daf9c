/* The monotonic clock in seconds, for the extension's timings (stats, the backend's timeline). */
#ifndef FM_CLOCK_H
#define FM_CLOCK_H

#include <time.h>

static inline double fm_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

#endif
