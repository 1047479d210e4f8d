// Package procs owns how many CPUs the daemon's Go code runs on at once
// (runtime.GOMAXPROCS, the Go scheduler's Ps): one while the daemon's load
// fits one CPU, every CPU it may use while it does not. It does not own the
// work (the stack's and the proxy's goroutines) or how many receive queues
// a link has (the daemon sizes those from Max, once, at start).
//
// # Why
//
// Go's scheduler keeps a P's thread looking for work whenever another P is
// idle: a thread that wakes from the netpoller with a ready goroutine wakes
// a second thread to spin on the idle P (runtime.resetspinning → wakep),
// which finds nothing and parks again. A relayed round trip wakes the
// daemon twice (the pod's frame, the host socket's answer), so with two Ps
// each wake costs a futex wake and, on a VM, an inter-processor interrupt
// to an idle vCPU: tens of µs where the work itself is a few. With one P
// there is no idle P to wake. But one P caps the daemon at one CPU, and
// several flows (4 iperf3 streams, PACKET_FANOUT queues) need two. Measured
// on the 2-vCPU bench VM, same build, one run (make bench, 3 rounds): one P
// against two gave connections/s 1.27×, RR p50 0.77×, one stream either way
// unchanged, 4 streams 0.79×.
//
// # Theory of operation
//
// Run samples the process's CPU time (getrusage: user + system, so the
// kernel work our system calls do counts) every Interval and acts on the
// CPUs used over it:
//   - at one P, a sample at or above Up (default 0.85 CPU: the one P is
//     nearly always busy) raises to Max at once;
//   - at Max, DownAfter samples in a row below Down (default 0.6 CPU, 10
//     samples: a second of load one CPU carries with room) lower to one.
//
// The gap between Up and Down, and the second it takes to come down, keep a
// load near one CPU from flapping; a raise costs one sample (100 ms) of
// running on one CPU. Each change is a runtime.GOMAXPROCS call (a
// stop-the-world of a few µs), at most a few per second by construction.
// Mode Fixed sets N once and runs no sampler.
//
// Limits: the sampler is one goroutine and one timer (10 wake-ups a second);
// Max is read at start (runtime.GOMAXPROCS(0): the CPUs, the cgroup's CPU
// limit or $GOMAXPROCS) and a later change of the CPU quota is seen at the
// next start, as calling runtime.GOMAXPROCS ends the runtime's own updates.
package procs

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults of Config.
const (
	DefaultInterval  = 100 * time.Millisecond
	DefaultUp        = 0.85
	DefaultDown      = 0.6
	DefaultDownAfter = 10
)

// Auto is the --procs value that runs the controller.
const Auto = "auto"

// Config is a controller's policy. Zero fields take the defaults.
type Config struct {
	// Max is the most Ps; 0 is runtime.GOMAXPROCS(0) at New.
	Max int
	// Fixed, when positive, is the one P count to run with (no sampler).
	Fixed     int
	Interval  time.Duration
	Up, Down  float64
	DownAfter int
	// cpu and set replace getrusage and runtime.GOMAXPROCS in tests.
	cpu func() time.Duration
	set func(int)
}

// ParseFlag reads --procs: "auto" or a count from 1 to max.
func ParseFlag(s string, max int) (Config, error) {
	if s == Auto {
		return Config{Max: max}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > max {
		return Config{}, fmt.Errorf("--procs %q: want %q or a count from 1 to %d (runtime.GOMAXPROCS at start)", s, Auto, max)
	}
	return Config{Max: max, Fixed: n}, nil
}

// Controller sets GOMAXPROCS by Config's policy.
type Controller struct {
	cfg    Config
	procs  atomic.Int64
	raises atomic.Uint64
	lowers atomic.Uint64
	// below counts consecutive samples under Down at Max.
	below int
}

// Stats is a controller's state for status and metrics.
type Stats struct {
	// Procs is the current GOMAXPROCS, Max its ceiling.
	Procs, Max int
	// Auto is true when the sampler runs (--procs auto).
	Auto bool
	// Raises and Lowers count the changes to Max and to one.
	Raises, Lowers uint64
}

// New returns a controller; nothing changes until Run.
func New(cfg Config) *Controller {
	if cfg.Max <= 0 {
		cfg.Max = runtime.GOMAXPROCS(0)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Up <= 0 {
		cfg.Up = DefaultUp
	}
	if cfg.Down <= 0 {
		cfg.Down = DefaultDown
	}
	if cfg.DownAfter <= 0 {
		cfg.DownAfter = DefaultDownAfter
	}
	if cfg.cpu == nil {
		cfg.cpu = processCPU
	}
	if cfg.set == nil {
		cfg.set = func(n int) { runtime.GOMAXPROCS(n) }
	}
	c := &Controller{cfg: cfg}
	c.procs.Store(int64(cfg.Max))
	return c
}

// Run applies the policy until ctx ends, then restores Max.
func (c *Controller) Run(ctx context.Context) {
	if c.cfg.Fixed > 0 {
		c.setProcs(c.cfg.Fixed)
		return
	}
	if c.cfg.Max <= 1 {
		return
	}
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	defer c.setProcs(c.cfg.Max)
	last, lastAt := c.cfg.cpu(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			cpu := c.cfg.cpu()
			if wall := now.Sub(lastAt); wall > 0 {
				c.step(float64(cpu-last) / float64(wall))
			}
			last, lastAt = cpu, now
		}
	}
}

// step takes one sample: the CPUs the process used since the last one.
func (c *Controller) step(used float64) {
	switch p := int(c.procs.Load()); {
	case p < c.cfg.Max && used >= c.cfg.Up:
		c.below = 0
		c.setProcs(c.cfg.Max)
		c.raises.Add(1)
	case p > 1 && used < c.cfg.Down:
		if c.below++; c.below >= c.cfg.DownAfter {
			c.below = 0
			c.setProcs(1)
			c.lowers.Add(1)
		}
	default:
		c.below = 0
	}
}

func (c *Controller) setProcs(n int) {
	if int(c.procs.Load()) == n {
		return
	}
	c.cfg.set(n)
	c.procs.Store(int64(n))
}

// Stats returns the controller's state.
func (c *Controller) Stats() Stats {
	return Stats{Procs: int(c.procs.Load()), Max: c.cfg.Max, Auto: c.cfg.Fixed == 0 && c.cfg.Max > 1,
		Raises: c.raises.Load(), Lowers: c.lowers.Load()}
}

// processCPU is the process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
