/*
 * hft_clock.h -- cheap nanosecond timestamps from the CPU's time-stamp counter.
 *
 * A CLOCK_MONOTONIC read costs a vDSO call (tens of ns, more under some
 * hypervisors); RDTSCP is one instruction. hft_clock_now_ns() converts the TSC
 * to nanoseconds on the CLOCK_MONOTONIC timeline, so its values can be mixed
 * with clock_gettime(CLOCK_MONOTONIC) / Python's time.monotonic_ns().
 *
 * Source (chosen once, by hft_clock_init):
 *   - TSC when the CPU is x86-64, reports an invariant TSC (CPUID 0x80000007
 *     EDX bit 8: constant rate, keeps ticking in sleep states) and RDTSCP, and
 *     HFT_CLOCK_FORCE_MONOTONIC is not "1" in the environment;
 *   - CLOCK_MONOTONIC otherwise (or if calibration gives an absurd rate).
 *
 * Calibration: the TSC rate is measured against CLOCK_MONOTONIC over about
 * 20 ms at init (init sleeps, it does not spin). Each end of that window is
 * the TSC read between two clock_gettime calls, best of several tries, paired
 * with their midpoint, so the rate error is about (bracket width / 20 ms), a
 * few ppm. Reading the nominal rate instead (CPUID leaf 0x15) was rejected:
 * many CPUs and most hypervisors report 0 there, and a measured rate is
 * measured against the very clock we want to agree with.
 *
 * Global state: init writes, exactly once per process, the source, the rate
 * (as a 32.32 fixed-point ns-per-cycle multiplier) and a (TSC, CLOCK_MONOTONIC)
 * base pair; nothing changes afterwards. There is no recalibration, so over
 * long spans now_ns() drifts from CLOCK_MONOTONIC by the calibration error
 * (a few us per second at worst) plus any NTP slewing the kernel applies to
 * CLOCK_MONOTONIC: use it for intervals and event ordering within a process,
 * not as a cross-host time base.
 *
 * Ordering: readings use RDTSCP, which waits for earlier instructions to
 * finish, so two readings on one thread never come out of order. Across
 * threads (and after a migration between cores) this relies on the kernel
 * having synchronised the cores' TSCs, as Linux does on invariant-TSC systems.
 *
 * Concurrency: hft_clock_init is thread-safe and idempotent (a pthread once-
 * guard); every other function may be called from any thread at any time and
 * calls init itself on first use, so calling init up front only moves the
 * ~20 ms calibration out of the first timestamp.
 */
#ifndef HFT_CLOCK_H
#define HFT_CLOCK_H

#include "hft_common.h"

/* Values of hft_clock_source(). */
#define HFT_CLOCK_SOURCE_MONOTONIC 0
#define HFT_CLOCK_SOURCE_TSC 1

/* Choose the source and calibrate (see above). Returns HFT_OK; an unusable TSC
 * is not an error, it selects CLOCK_MONOTONIC. */
int hft_clock_init(void);

/* Nanoseconds on the CLOCK_MONOTONIC timeline; non-decreasing per thread. */
uint64_t hft_clock_now_ns(void);

/* A raw tick count of the active source: TSC cycles, or nanoseconds when the
 * source is CLOCK_MONOTONIC. Cheapest way to time a section: subtract two
 * readings, convert the difference once with hft_clock_cycles_to_ns. */
uint64_t hft_clock_cycles(void);

/* Convert a tick count (a difference of hft_clock_cycles readings) to ns.
 * The identity when the source is CLOCK_MONOTONIC. */
uint64_t hft_clock_cycles_to_ns(uint64_t cycles);

/* The calibrated TSC rate in GHz, or 0.0 when the source is not the TSC. */
double hft_clock_tsc_ghz(void);

/* HFT_CLOCK_SOURCE_TSC or HFT_CLOCK_SOURCE_MONOTONIC. */
int hft_clock_source(void);

#endif /* HFT_CLOCK_H */
