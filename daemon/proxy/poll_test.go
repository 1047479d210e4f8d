package proxy

import (
	"os"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// countHandler counts the events a registration got.
type countHandler struct{ calls, in atomic.Int64 }

func (h *countHandler) ready(ev uint32) {
	h.calls.Add(1)
	if ev&unix.EPOLLIN != 0 {
		h.in.Add(1)
	}
}

// TestPollerPoll: poll dispatches what is ready now on the caller's
// goroutine, without the poller's own goroutine (not started here): one
// edge, one event; nothing pending, nothing dispatched; while another
// caller polls, 0 at once; after close, 0.
func TestPollerPoll(t *testing.T) {
	p, err := newPoller()
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	rc, err := r.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	h := &countHandler{}
	if err := p.add(p.newID(), rc, h, false, true); err != nil {
		t.Fatal(err)
	}
	if n := p.poll(); n != 0 || h.calls.Load() != 0 {
		t.Fatalf("poll of an idle set = %d, handler called %d times", n, h.calls.Load())
	}
	if _, err := w.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if n := p.poll(); n != 1 || h.in.Load() != 1 {
		t.Fatalf("poll after a write = %d, EPOLLIN seen %d times; want 1, 1", n, h.in.Load())
	}
	// Edge-triggered: the byte is still unread, but no new edge came.
	if n := p.poll(); n != 0 {
		t.Fatalf("poll without a new edge = %d", n)
	}
	if _, err := w.Write([]byte{2}); err != nil {
		t.Fatal(err)
	}
	p.pollMu.Lock()
	if n := p.poll(); n != 0 {
		t.Fatalf("poll while another caller polls = %d, want 0", n)
	}
	p.pollMu.Unlock()
	if n := p.poll(); n != 1 || h.in.Load() != 2 {
		t.Fatalf("poll after the other caller = %d, EPOLLIN seen %d times; want 1, 2", n, h.in.Load())
	}
	p.close()
	if _, err := w.Write([]byte{3}); err != nil {
		t.Fatal(err)
	}
	if n := p.poll(); n != 0 {
		t.Fatalf("poll after close = %d", n)
	}
}
