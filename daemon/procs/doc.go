// Package procs owns how many threads the daemon runs Go code on at once:
// the runtime's GOMAXPROCS, its Ps. With --procs auto (the default) a
// Governor keeps one P while one CPU carries the traffic and gives the
// runtime back its default (every CPU the daemon may use) when the traffic
// is bulk or one CPU is full; --procs N fixes the count. Not owned here:
// what the threads run (the stack's receive goroutines, the proxy's
// poller), how many receive queues a link has (daemon.DefaultRxQueues,
// fixed when the link is attached, from the CPUs at start), and the
// counters the Governor reads (the process's CPU time from getrusage(2),
// the stack's NIC byte counters).
//
// # Why one P
//
// A relayed round trip or a short connection moves a handful of small
// frames through several threads: the pod's, the daemon's, the host
// peer's. With a second P idle, Go's scheduler wakes an OS thread for
// every goroutine that becomes ready (wakep: a spinning M looking for
// work), and an AF_PACKET frame or host-socket reply that arrives while
// the daemon runs wakes a second thread parked in the netpoller; on a
// small VM each wake-up of an idle vCPU costs 16-23 µs. With one P the
// goroutine that runs takes the next event itself on its way into the
// scheduler (a non-blocking netpoll), as a one-thread event loop does
// (pasta, nginx): on the bench's 2-CPU VM a connection cost the daemon
// 199 µs of CPU against 231 and connections/s rose 0.45× → 0.50× of the
// kernel path (test/bench, an A/B of GOMAXPROCS=1 in one run). Bulk
// transfers go the other way: a stream's two directions and its host
// socket pipeline across CPUs, and one P cost one stream host→pod 20%
// and four streams 20-25%. Neither count wins both; the traffic tells
// which one it is, as a NIC driver's adaptive interrupt moderation reads
// its packet and byte rates (lib/dim: net_dim).
//
// # Theory of operation
//
// Governor.Run samples every Interval (100 ms): the process's CPU time
// (user + system, getrusage RUSAGE_SELF) and the bytes received and sent
// by every NIC of the stack. decide, a pure function of the two rates,
// the current width and its counters, says what to do:
//
//   - Narrow (one P): a window at or above BulkRate bytes/s, or using
//     FullCPU of a CPU or more (one P is nearly saturated), spreads at
//     once: runtime.SetDefaultGOMAXPROCS, which also turns the runtime's
//     own tracking of the CPU count and cgroup quota back on.
//   - Spread: the daemon stays spread for at least a hold of
//     HoldWindows; after it, QuietWindows quiet windows in a row (under
//     BulkRate/4 and under QuietCPU of a CPU) narrow it to one P
//     (runtime.GOMAXPROCS(1)). A window that is not quiet restarts the
//     count.
//   - A spread that comes within a hold's length of the last narrowing
//     doubles the hold (up to MaxHoldWindows): a load that sits on the
//     line changes width at most a few times a minute, not every second.
//     A spread after a quiet spell resets the hold to HoldWindows.
//
// Changing GOMAXPROCS stops the world for the runtime's procresize, tens
// of microseconds; the counters (Status) say how often it happened. A
// NIC removed between two samples makes the byte sum go down; such a
// window counts no bytes. When Run returns (the daemon is stopping), the
// runtime's default is restored, so shutdown has every CPU.
//
// The Governor does not run, and the width stays fixed, when --procs
// names a count, when the GOMAXPROCS environment variable is set (the
// operator chose), or when the runtime's default is already one P.
//
// # Limits
//
// One goroutine and one ticker; two system calls per window (getrusage,
// and none for the NIC counters, which are atomics read in place), and
// one list of the stack's NICs. The thresholds are constants, measured on
// the bench's VM (test/bench): a relayed round trip or connection stream
// moves well under 1 MiB/s and 0.6 CPU, a bulk stream hundreds of MiB/s.
package procs
