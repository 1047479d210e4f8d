package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/tcp"
)

const (
	// maxDNSInFlight bounds the UDP queries being relayed; past it a
	// query is dropped (DNSFailures) and the client retries.
	maxDNSInFlight = 256
	// dnsQueryTimeout is the wait for one nameserver (glibc's timeout:
	// is 5 s; a stub on the host answers well within 2 s).
	dnsQueryTimeout = 2 * time.Second
	// maxNameservers is resolv.conf's MAXNS.
	maxNameservers = 3
	// dnsHeaderLen is the fixed DNS header (RFC 1035 §4.1.1).
	dnsHeaderLen = 12
	// maxResolvConf bounds the resolv.conf bytes read.
	maxResolvConf = 64 << 10
)

// resolvConf is the nameserver list of a resolv.conf file, re-read when
// its modification time or size changes.
type resolvConf struct {
	path string

	mu      sync.Mutex
	loaded  bool
	mtime   time.Time
	size    int64
	servers []netip.AddrPort // bound: maxNameservers
}

// localResolver is resolv.conf(5)'s default without nameserver lines.
var localResolver = netip.MustParseAddrPort("127.0.0.1:53")

// nameservers returns the current list (never empty).
func (r *resolvConf) nameservers() []netip.AddrPort {
	fi, err := os.Stat(r.path)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err != nil:
		if !r.loaded {
			r.servers = nil
		}
	case !r.loaded || !fi.ModTime().Equal(r.mtime) || fi.Size() != r.size:
		if b, err := readLimited(r.path, maxResolvConf); err == nil {
			r.servers = parseResolvConf(b)
			r.loaded, r.mtime, r.size = true, fi.ModTime(), fi.Size()
		}
	}
	if len(r.servers) == 0 {
		return []netip.AddrPort{localResolver}
	}
	return r.servers
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}

// parseResolvConf takes the "nameserver" lines (resolv.conf(5)), the
// first maxNameservers addresses, port 53. Other lines are ignored.
func parseResolvConf(b []byte) []netip.AddrPort {
	var out []netip.AddrPort
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() && len(out) < maxNameservers {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			continue
		}
		out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
	}
	return out
}

// dnsUDPLoop takes queries sent to the gateway's port 53.
func (e *Engine) dnsUDPLoop() {
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := e.dnsUDP.ReadFromUDPAddrPort(buf)
		if err != nil {
			if e.ctx.Err() != nil || isClosed(err) {
				return
			}
			if isErrno(err) {
				continue
			}
			e.log.Warn("proxy: dns listener stopped", "err", err)
			return
		}
		e.c.dnsQueries.Add(1)
		if n < dnsHeaderLen {
			e.c.dnsFailures.Add(1)
			continue
		}
		select {
		case e.dnsSem <- struct{}{}:
		default:
			e.c.dnsFailures.Add(1)
			continue
		}
		q := append([]byte(nil), buf[:n]...)
		if !e.spawn(func() {
			defer func() { <-e.dnsSem }()
			e.dnsUDPQuery(q, from)
		}) {
			<-e.dnsSem
			return
		}
	}
}

// dnsUDPQuery relays one query to the nameservers in order and sends the
// first matching response back to the client.
func (e *Engine) dnsUDPQuery(q []byte, client netip.AddrPort) {
	id := binary.BigEndian.Uint16(q)
	for _, ns := range e.resolv.nameservers() {
		if e.ctx.Err() != nil {
			return
		}
		if e.dnsExchange(ns, q, id, client) {
			return
		}
	}
	e.c.dnsFailures.Add(1)
}

func (e *Engine) dnsExchange(ns netip.AddrPort, q []byte, id uint16, client netip.AddrPort) bool {
	ctx, cancel := context.WithTimeout(e.ctx, dnsQueryTimeout)
	defer cancel()
	c, err := e.dial(ctx, "udp", ns.String())
	if err != nil {
		e.log.Debug("proxy: dns dial failed", "ns", ns, "err", err)
		return false
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	if _, err := c.Write(q); err != nil {
		return false
	}
	bp := dgramBufs.Get().(*[]byte)
	defer dgramBufs.Put(bp)
	for {
		n, err := c.Read(*bp)
		if err != nil {
			e.log.Debug("proxy: dns query failed", "ns", ns, "err", err)
			return false
		}
		r := (*bp)[:n]
		// RFC 1035 §4.1.1: a response (QR) with the query's ID;
		// anything else on this socket is ignored.
		if n < dnsHeaderLen || binary.BigEndian.Uint16(r) != id || r[2]&0x80 == 0 {
			continue
		}
		if _, err := e.dnsUDP.WriteToUDPAddrPort(r, client); err != nil {
			e.log.Debug("proxy: dns reply to pod failed", "client", client, "err", err)
		}
		return true
	}
}

// dnsTCPLoop accepts DNS-over-TCP connections (RFC 7766) to the gateway.
func (e *Engine) dnsTCPLoop() {
	for {
		c, err := e.dnsTCP.AcceptTCP()
		if err != nil {
			if e.ctx.Err() == nil && !isClosed(err) {
				e.log.Warn("proxy: dns tcp listener stopped", "err", err)
			}
			return
		}
		e.c.dnsQueries.Add(1)
		f := e.newFlow()
		var pod netip.Addr
		if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			pod = a.AddrPort().Addr().Unmap()
		}
		if !e.acquire(pod, f, kindTCP) {
			abortConn(c)
			f.done()
			continue
		}
		f.add(abortFunc(func() { abortConn(c) }))
		if !e.spawn(func() { e.dnsTCPRelay(c, f) }) {
			abortConn(c)
			e.release(f)
			f.done()
			return
		}
	}
}

// dnsTCPRelay relays a whole DNS-over-TCP connection to the first
// nameserver that accepts one.
func (e *Engine) dnsTCPRelay(c *tcp.Conn, f *flowHandle) {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		f.pod = a.AddrPort()
	}
	for _, ns := range e.resolv.nameservers() {
		ctx, cancel := context.WithTimeout(f.ctx, dnsQueryTimeout)
		up, err := e.dial(ctx, "tcp", ns.String())
		cancel()
		if err != nil {
			e.log.Debug("proxy: dns tcp dial failed", "ns", ns, "err", err)
			continue
		}
		if !f.add(abortFunc(func() { abortConn(up) })) {
			e.release(f)
			f.done()
			return
		}
		e.setKeepAlive(c)
		e.setKeepAlive(up)
		f.dst = ns
		f.setRelay(RelayDNS, c, up)
		e.relayTCP(f, c, up)
		return
	}
	e.c.dnsFailures.Add(1)
	abortConn(c)
	e.release(f)
	f.done()
}
