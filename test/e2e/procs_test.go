package e2e

// End-to-end test of serve --procs auto (daemon/procs): the daemon's count
// of Ps follows its traffic.

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
)

// An idle daemon narrows to one P; a bulk transfer through a relay
// spreads it to the runtime's default; when the transfer ends it narrows
// again. The transfer is checked byte for byte.
func TestProxyProcsAuto(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: --procs auto keeps the runtime's default of one P")
	}
	if v := os.Getenv("GOMAXPROCS"); v != "" {
		t.Skipf("GOMAXPROCS=%s in the environment fixes the daemon's Ps", v)
	}
	e := newProxyEnv(t, nil, nil)
	status := func() api.ProcsStatus {
		t.Helper()
		st, err := e.client().Status(context.Background())
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		if st.Procs == nil {
			t.Fatalf("status has no procs: %+v", st)
		}
		return *st.Procs
	}
	wait := func(what string, ok func(api.ProcsStatus) bool, within time.Duration) api.ProcsStatus {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			st := status()
			if ok(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %v: %+v", what, within, st)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	st := status()
	if st.Mode != api.ProcsAuto || st.Default < 2 {
		t.Fatalf("status %+v: want mode auto with a default of at least 2", st)
	}
	st = wait("idle: narrowed to one P", func(s api.ProcsStatus) bool { return s.Procs == 1 && s.Narrows >= 1 }, 15*time.Second)
	t.Logf("idle: %+v", st)

	p := e.addPod()
	dst := hostEcho(t, e.host.Local[0])
	c, err := dialIn(p.ns, "tcp4", dst.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(90 * time.Second))

	// The pod writes a pattern through the echo until the daemon has
	// spread (bounded), then half-closes; the reader checks every byte.
	chunk := randBytes(256 << 10)
	stop := make(chan struct{})
	wrote := make(chan int64, 1)
	go func() {
		var n int64
		defer func() { c.(*net.TCPConn).CloseWrite(); wrote <- n }()
		for i := 0; i < 4096; i++ { // at most 1 GiB
			select {
			case <-stop:
				return
			default:
			}
			m, err := c.Write(chunk)
			n += int64(m)
			if err != nil {
				return
			}
		}
	}()
	read := make(chan error, 1)
	var got int64
	go func() {
		b := make([]byte, len(chunk))
		for {
			off := int(got % int64(len(chunk)))
			m, err := c.Read(b[:len(chunk)-off])
			if m > 0 && !bytes.Equal(b[:m], chunk[off:off+m]) {
				read <- io.ErrUnexpectedEOF
				return
			}
			got += int64(m)
			if err == io.EOF {
				read <- nil
				return
			}
			if err != nil {
				read <- err
				return
			}
		}
	}()
	spread := wait("bulk: spread to the default", func(s api.ProcsStatus) bool {
		return s.Procs == s.Default && s.Spreads >= 1
	}, 30*time.Second)
	close(stop)
	n := <-wrote
	if err := <-read; err != nil || got != n {
		t.Fatalf("echo: read %d of %d bytes: %v", got, n, err)
	}
	t.Logf("bulk: %+v after %d MiB", spread, n>>20)
	if spread.BytesPerSecond < 1<<20 {
		t.Errorf("the spreading window saw %d bytes/s", spread.BytesPerSecond)
	}
	st = wait("after the transfer: narrowed again", func(s api.ProcsStatus) bool {
		return s.Procs == 1 && s.Narrows > spread.Narrows
	}, 30*time.Second)
	t.Logf("after: %+v", st)
}
