package e2e

import (
	"io"
	"testing"
	"time"
)

// TestProxyShortConnectionsPastConntrackMax: a pod opens many more short
// connections through proxy mode than the stack's connection table
// holds (serve --conntrack-max). Each ends in TIME_WAIT in the table for
// 120 s; a new flow takes the place of an ended one (the kernel's
// tcp_can_early_drop), so every connection succeeds and the table stays
// at its bound, while an established flow held open throughout is never
// the one evicted.
func TestProxyShortConnectionsPastConntrackMax(t *testing.T) {
	const max, conns = 32, 200
	e := newProxyEnv(t, []string{"--conntrack-max=32"}, nil)
	p := e.addPod()
	echo := hostEcho(t, e.host.Local[0])

	held, err := dialIn(p.ns, "tcp4", echo.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	roundTrip := func(i int, c io.ReadWriter) {
		t.Helper()
		b := []byte{byte(i)}
		if _, err := c.Write(b); err != nil {
			t.Fatalf("connection %d: write: %v", i, err)
		}
		if _, err := io.ReadFull(c, b); err != nil || b[0] != byte(i) {
			t.Fatalf("connection %d: echo %v, %v", i, b, err)
		}
	}
	held.SetDeadline(time.Now().Add(time.Minute))
	roundTrip(0, held)

	for i := 1; i <= conns; i++ {
		// 2 s: a SYN dropped on a full table would be retransmitted
		// after 1 s, so a connection that waited on one fails here.
		c, err := dialIn(p.ns, "tcp4", echo.String(), 2*time.Second)
		if err != nil {
			ct, _ := e.client().Conntrack(t.Context(), false)
			t.Fatalf("connection %d of %d with a table of %d: %v (conntrack %+v)", i, conns, max, err, ct)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		roundTrip(i, c)
		c.Close()
	}
	roundTrip(conns+1, held)

	ct, err := e.client().Conntrack(t.Context(), false)
	if err != nil {
		t.Fatal(err)
	}
	if ct.Max != max || ct.Count > max {
		t.Fatalf("table %d of %d, want at most %d", ct.Count, ct.Max, max)
	}
	// Every connection but the ones the table still holds made room by
	// evicting an ended flow; none was refused.
	if ct.Stats.Drop != 0 || ct.Stats.EarlyDrop < conns+1-max {
		t.Fatalf("conntrack -S %+v: want no drop and at least %d early drops", ct.Stats, conns+1-max)
	}
}
