package proxy

import (
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Keepalive on both sockets of a TCP relay (outbound, port mapping, DNS
// over TCP): a peer that vanished without FIN or RST, on either side, is
// found by its unanswered probes and its relay closed, so the flow leaves
// the pod's count and its buffers are freed (RFC 1122 §4.2.3.6, RFC 9293
// §3.8.4). The stack's side is our own TCP's keepalive timer; the host's
// side the kernel's. Defaults are the kernel's sysctls: probes after 2 h
// idle (tcp_keepalive_time), every 75 s (tcp_keepalive_intvl), the
// connection dropped after 9 unanswered (tcp_keepalive_probes). So a dead
// peer is gone after Idle + Count·Interval at most (2 h 11 m 15 s by
// default); data in flight is watched by the retransmission timer instead.
const (
	DefaultKeepAliveIdle     = 2 * time.Hour
	DefaultKeepAliveInterval = 75 * time.Second
	DefaultKeepAliveCount    = 9
)

// keepAliveConfig is the configuration both sides of a relay get.
func (c *Config) keepAliveConfig() net.KeepAliveConfig {
	if c.KeepAliveIdle < 0 {
		return net.KeepAliveConfig{Enable: false, Idle: -1, Interval: -1, Count: -1}
	}
	return net.KeepAliveConfig{Enable: true, Idle: c.KeepAliveIdle, Interval: c.KeepAliveInterval, Count: c.KeepAliveCount}
}

// setKeepAlive configures keepalive on one socket of a relay, where it
// can: *net.TCPConn and the stack's *tcp.Conn can; a test's in-memory
// conn cannot and is left alone.
func (e *Engine) setKeepAlive(c net.Conn) {
	if k, ok := c.(interface {
		SetKeepAliveConfig(net.KeepAliveConfig) error
	}); ok {
		if err := k.SetKeepAliveConfig(e.keepAlive); err != nil {
			e.log.Debug("proxy: keepalive not set", "conn", c.LocalAddr(), "err", err)
		}
	}
}

// hostKeepAliveConfig is keepAliveConfig for a host socket the engine
// opened itself (dialAsync), whose TCP_KEEPIDLE, TCP_KEEPINTVL and
// TCP_KEEPCNT were never set: the kernel uses the netns's sysctls
// (tcp_keepalive_time, _intvl, _probes; keepalive_time_when() and the
// others in include/net/tcp.h) for those. A field equal to the sysctl
// read when the engine started is left to the sysctl (negative: not
// set), which saves its setsockopt(2) on every relayed connection: with
// the defaults, only SO_KEEPALIVE is set. A sysctl changed later applies
// to such a socket as it does to every socket of the host.
func (c *Config) hostKeepAliveConfig(sysctl func(name string) (int, bool)) net.KeepAliveConfig {
	k := c.keepAliveConfig()
	if !k.Enable {
		return k
	}
	secs := func(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }
	if v, ok := sysctl("tcp_keepalive_time"); ok && k.Idle > 0 && secs(k.Idle) == v {
		k.Idle = -1
	}
	if v, ok := sysctl("tcp_keepalive_intvl"); ok && k.Interval > 0 && secs(k.Interval) == v {
		k.Interval = -1
	}
	if v, ok := sysctl("tcp_keepalive_probes"); ok && k.Count > 0 && k.Count == v {
		k.Count = -1
	}
	return k
}

// ipv4Sysctl reads /proc/sys/net/ipv4/name as an integer, in the netns of
// the calling thread (the engine's, where its host sockets live).
func ipv4Sysctl(name string) (int, bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/" + name)
	if err != nil {
		return 0, false
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return v, err == nil
}
