package e2e

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/test/e2e/env"
	"github.com/containernetworking/plugins/pkg/ns"
)

// TestProxyKeepaliveClosesDeadPeer: a relayed connection whose host-side
// peer vanishes without FIN or RST (a server in a namespace of its own
// whose packets iptables then drops) is found by TCP keepalive on the
// daemon's host socket and closed: it leaves the daemon's flow table and
// the pod's flow count within the keepalive time the test configures
// (serve --proxy-keepalive-idle 2s --proxy-keepalive-interval 1s
// --proxy-keepalive-count 2: at most 4 s of silence), and the pod's
// connection is reset.
func TestProxyKeepaliveClosesDeadPeer(t *testing.T) {
	requireCmd(t, "iptables")
	const idle, interval, count = 2 * time.Second, time.Second, 2
	peer, err := env.NewHostPeer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(peer.Close)

	// An echo server in the peer's namespace.
	var ln net.Listener
	err = ns.WithNetNSPath(peer.NSPath, func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp4", net.JoinHostPort(peer.Addr.String(), "0"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); io.Copy(c, c) }()
		}
	}()
	srv := netip.AddrPortFrom(peer.Addr, uint16(ln.Addr().(*net.TCPAddr).Port))

	e := newProxyEnv(t, []string{"--proxy-keepalive-idle", idle.String(), "--proxy-keepalive-interval", interval.String(),
		"--proxy-keepalive-count", "2"}, nil)
	p := e.addPod()
	id := e.attachments()[0].ID
	c, err := dialIn(p.ns, "tcp4", srv.String(), 5*time.Second)
	if err != nil {
		t.Fatalf("pod → %v: %v", srv, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatalf("echo through the relay: %v", err)
	}
	if st := e.proxyStats(); st.ActiveTCP != 1 || st.Pods[id].ActiveFlows != 1 {
		t.Fatalf("before: %s", statsJSON(st))
	}

	if err := peer.Drop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	limit := idle + count*interval + 3*time.Second // the slack: keepalive timers tick in seconds
	for {
		st := e.proxyStats()
		if st.ActiveTCP == 0 && st.Pods[id].ActiveFlows == 0 {
			break
		}
		if time.Since(start) > limit {
			t.Fatalf("the relay to the vanished peer is still there after %v (keepalive %v + %d × %v): %s",
				time.Since(start).Round(time.Millisecond), idle, count, interval, statsJSON(st))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("relay to the vanished peer closed %v after it went silent (keepalive %v + %d × %v)",
		time.Since(start).Round(100*time.Millisecond), idle, count, interval)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("pod's connection after the relay closed: %v, want it reset", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
