package daemon

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/daemon/procs"
	"github.com/cni-userstack/cni-userstack/netstack"
)

// ProcsAuto is --procs's default: the Governor of daemon/procs.
const ProcsAuto = "auto"

// maxProcs bounds a fixed --procs.
const maxProcs = 1024

// startProcs is the runtime's default count of Ps when the process
// started, before --procs changes it: what links size their receive
// queues by (DefaultRxQueues) and what "auto" spreads to.
var startProcs = runtime.GOMAXPROCS(0)

// validProcs reports whether v is a --procs value.
func validProcs(v string) bool {
	if v == ProcsAuto {
		return true
	}
	n, err := strconv.Atoi(v)
	return err == nil && n >= 1 && n <= maxProcs
}

// procsRun is the --procs setting at work.
type procsRun struct {
	status api.ProcsStatus // Mode, Reason, Default; the rest is read live
	gov    *procs.Governor // nil unless auto runs
	stop   context.CancelFunc
	done   chan struct{}
}

// runProcs applies --procs: a fixed count at once, or a Governor reading
// the process's CPU time and the stack's NIC byte counters. Stop it with
// close.
func runProcs(v string, s *netstack.Stack, log *slog.Logger) *procsRun {
	p := &procsRun{status: api.ProcsStatus{Mode: api.ProcsFixed, Default: startProcs}}
	switch {
	case v != ProcsAuto:
		n, _ := strconv.Atoi(v) // Validate checked it
		runtime.GOMAXPROCS(n)
		p.status.Reason = "--procs " + v
	case os.Getenv("GOMAXPROCS") != "":
		p.status.Reason = "GOMAXPROCS=" + os.Getenv("GOMAXPROCS") + " in the environment"
	case startProcs < 2:
		p.status.Reason = "one CPU"
	default:
		p.status.Mode = api.ProcsAuto
		p.gov = procs.New(procs.Config{Read: sampler(s), Logger: log})
		ctx, cancel := context.WithCancel(context.Background())
		p.stop, p.done = cancel, make(chan struct{})
		go func() {
			defer close(p.done)
			p.gov.Run(ctx)
		}()
	}
	log.Info("procs", "mode", p.status.Mode, "reason", p.status.Reason, "default", startProcs, "now", runtime.GOMAXPROCS(0))
	return p
}

// sampler reads what the Governor follows: the process's CPU time and
// the bytes through every NIC of s.
func sampler(s *netstack.Stack) func() procs.Sample {
	return func() procs.Sample {
		var ru unix.Rusage
		var cpu time.Duration
		if unix.Getrusage(unix.RUSAGE_SELF, &ru) == nil {
			cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
		var b uint64
		for _, n := range s.Devices().List() {
			rx, tx := n.ByteCounts()
			b += rx + tx
		}
		return procs.Sample{At: time.Now(), CPU: cpu, Bytes: b}
	}
}

// Status reports the setting and, under auto, what the Governor did.
func (p *procsRun) Status() *api.ProcsStatus {
	st := p.status
	st.Procs = runtime.GOMAXPROCS(0)
	if p.gov != nil {
		g := p.gov.Status()
		st.Procs, st.Spreads, st.Narrows = g.Procs, g.Spreads, g.Narrows
		st.CPU, st.BytesPerSecond = g.CPU, uint64(g.Rate)
	}
	return &st
}

// close stops the Governor, which gives the runtime its default back.
func (p *procsRun) close() {
	if p.stop != nil {
		p.stop()
		<-p.done
	}
}
