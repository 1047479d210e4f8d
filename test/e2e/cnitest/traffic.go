package cnitest

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

var lossRE = regexp.MustCompile(`([0-9.]+)% packet loss`)

// Ping runs `ping -c count -W 1 -i 0.2 addr` inside n (nil = current
// netns) and returns the loss in percent and ping's output. 100% loss is a
// result, not an error; err is set only when ping could not run or its
// output has no loss line. Bounded by count*0.2 s + 10 s.
func Ping(t testing.TB, n ns.NetNS, addr string, count int) (lossPct float64, out string, err error) {
	t.Helper()
	if count < 1 {
		count = 1
	}
	if _, err := exec.LookPath("ping"); err != nil {
		return 0, "", errors.New("cnitest: ping not found: install iputils-ping (make deps)")
	}
	d := time.Duration(count)*200*time.Millisecond + 10*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	b, runErr := nsExec(ctx, n, "ping", "-n", "-c", strconv.Itoa(count), "-W", "1", "-i", "0.2", addr)
	out = string(b)
	m := lossRE.FindStringSubmatch(out)
	if m == nil {
		return 0, out, fmt.Errorf("cnitest: ping %s in %s: %v\n%s", addr, nsPath(n), runErr, out)
	}
	loss, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, out, fmt.Errorf("cnitest: ping loss %q: %w", m[1], err)
	}
	return loss, out, nil
}

// Transfer describes one checksummed TCP transfer: a server bound in
// ServerNS, a client in ClientNS sending Bytes of seeded pseudo-random data;
// the server answers with the SHA-256 and length of what it read and the
// client compares them with what it sent. Kernel sockets on both sides: a
// socket belongs to the netns of the thread that created it, so only the
// listen and the dial run inside the namespaces.
type Transfer struct {
	ServerNS ns.NetNS       // nil = current netns
	Listen   netip.AddrPort // address the server binds; port 0 = a free port
	ClientNS ns.NetNS       // nil = current netns
	Dial     netip.AddrPort // address the client dials; zero = the listener's address
	Bytes    int64
	Seed     uint64        // seed of the data (ChaCha8)
	Timeout  time.Duration // 0 = 2 minutes, for the whole transfer
}

// TransferResult is what a transfer measured, from the dial to the
// server's digest.
type TransferResult struct {
	Bytes    int64
	Duration time.Duration
}

// Gbps is the goodput in gigabits per second.
func (r TransferResult) Gbps() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Bytes) * 8 / r.Duration.Seconds() / 1e9
}

// TCPTransfer sends n bytes from a client in clientNS to a server listening
// on serverAddr in serverNS, verifying a SHA-256, within timeout (0 = 2 min).
func TCPTransfer(t testing.TB, serverNS ns.NetNS, serverAddr netip.AddrPort, clientNS ns.NetNS, n int64, timeout time.Duration) (int64, time.Duration, error) {
	t.Helper()
	r, err := Transfer{ServerNS: serverNS, Listen: serverAddr, ClientNS: clientNS, Bytes: n, Seed: 1, Timeout: timeout}.Run(t)
	return r.Bytes, r.Duration, err
}

// digestSize is the server's answer: SHA-256 then the byte count (big endian).
const digestSize = sha256.Size + 8

// Run performs the transfer.
func (x Transfer) Run(t testing.TB) (TransferResult, error) {
	t.Helper()
	if x.Timeout <= 0 {
		x.Timeout = 2 * time.Minute
	}
	if x.Bytes < 0 {
		return TransferResult{}, fmt.Errorf("cnitest: negative transfer size %d", x.Bytes)
	}
	deadline := time.Now().Add(x.Timeout)
	var ln *net.TCPListener
	err := do(x.ServerNS, func() error {
		l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(x.Listen))
		ln = l
		return err
	})
	if err != nil {
		return TransferResult{}, fmt.Errorf("cnitest: listen on %v in %s: %w", x.Listen, nsPath(x.ServerNS), err)
	}
	defer ln.Close()
	ln.SetDeadline(deadline)
	dial := x.Dial
	if !dial.IsValid() {
		dial = ln.Addr().(*net.TCPAddr).AddrPort()
	}

	srvErr := make(chan error, 1)
	go func() { srvErr <- serveDigest(ln, deadline) }()

	start := time.Now()
	var conn net.Conn
	err = do(x.ClientNS, func() error {
		d := net.Dialer{Deadline: deadline}
		c, err := d.Dial("tcp", dial.String())
		conn = c
		return err
	})
	if err != nil {
		ln.Close()
		<-srvErr
		return TransferResult{}, fmt.Errorf("cnitest: dial %v from %s: %w", dial, nsPath(x.ClientNS), err)
	}
	defer conn.Close()
	conn.SetDeadline(deadline)

	sent, sum, err := sendSeeded(conn, x.Bytes, x.Seed)
	if err != nil {
		conn.Close()
		ln.Close()
		return TransferResult{Bytes: sent}, fmt.Errorf("cnitest: sent %d of %d bytes to %v: %w (server: %v)", sent, x.Bytes, dial, err, <-srvErr)
	}
	var reply [digestSize]byte
	if _, err := io.ReadFull(conn, reply[:]); err != nil {
		ln.Close()
		return TransferResult{Bytes: sent}, fmt.Errorf("cnitest: reading the server's digest: %w (server: %v)", err, <-srvErr)
	}
	dur := time.Since(start)
	if err := <-srvErr; err != nil {
		return TransferResult{Bytes: sent}, err
	}
	got := int64(binary.BigEndian.Uint64(reply[sha256.Size:]))
	if got != sent {
		return TransferResult{Bytes: got, Duration: dur}, fmt.Errorf("cnitest: server read %d bytes, client sent %d", got, sent)
	}
	if subtle.ConstantTimeCompare(reply[:sha256.Size], sum) != 1 {
		return TransferResult{Bytes: got, Duration: dur}, fmt.Errorf("cnitest: SHA-256 mismatch over %d bytes: data corrupted in transit", got)
	}
	return TransferResult{Bytes: sent, Duration: dur}, nil
}

// serveDigest accepts one connection, reads it to EOF and answers with the
// SHA-256 and length of what it read.
func serveDigest(ln *net.TCPListener, deadline time.Time) error {
	c, err := ln.AcceptTCP()
	if err != nil {
		return fmt.Errorf("cnitest: server accept: %w", err)
	}
	defer c.Close()
	c.SetDeadline(deadline)
	h := sha256.New()
	n, err := io.CopyBuffer(h, c, make([]byte, 256<<10))
	if err != nil {
		return fmt.Errorf("cnitest: server read after %d bytes: %w", n, err)
	}
	var reply [digestSize]byte
	copy(reply[:], h.Sum(nil))
	binary.BigEndian.PutUint64(reply[sha256.Size:], uint64(n))
	if _, err := c.Write(reply[:]); err != nil {
		return fmt.Errorf("cnitest: server reply: %w", err)
	}
	return nil
}

// sendSeeded writes n bytes of ChaCha8(seed) output, then half-closes, and
// returns the count written and the SHA-256 of it.
func sendSeeded(c net.Conn, n int64, seed uint64) (int64, []byte, error) {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	src := rand.NewChaCha8(key)
	h := sha256.New()
	buf := make([]byte, 256<<10)
	var sent int64
	for sent < n {
		chunk := buf[:min(int64(len(buf)), n-sent)]
		src.Read(chunk)
		h.Write(chunk)
		w, err := c.Write(chunk)
		sent += int64(w)
		if err != nil {
			return sent, nil, err
		}
	}
	if tc, ok := c.(*net.TCPConn); ok {
		if err := tc.CloseWrite(); err != nil {
			return sent, nil, err
		}
	}
	return sent, h.Sum(nil), nil
}

// HostServerBody is what the servers of HostServer answer on "/".
const HostServerBody = "cnitest host server\n"

// maxServeBytes bounds /bytes?n=.
const maxServeBytes = 1 << 30

// HostServer starts an HTTP server in the current (host) netns on addr
// ("ip:port", port 0 = free) and returns its base URL; closed in t.Cleanup.
// Paths: "/" → HostServerBody; "/remote" → the client's address as the
// server saw it (to tell a pod's own address from a masqueraded one);
// "/bytes?n=N" → N bytes (≤ 1 GiB) of zeros.
func HostServer(t testing.TB, addr string) string {
	t.Helper()
	return ServerIn(t, nil, addr)
}

// ServerIn is HostServer with the listener created inside n (nil = current
// netns).
func ServerIn(t testing.TB, n ns.NetNS, addr string) string {
	t.Helper()
	var ln net.Listener
	err := do(n, func() error {
		l, err := net.Listen("tcp", addr)
		ln = l
		return err
	})
	if err != nil {
		t.Fatalf("cnitest: HTTP server on %s in %s: %v", addr, nsPath(n), err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, HostServerBody) })
	mux.HandleFunc("/remote", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.RemoteAddr) })
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 || n > maxServeBytes {
			http.Error(w, "n must be 0..1073741824", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.CopyN(w, zeros{}, n)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// HTTPGet fetches url from inside n (nil = current netns), within timeout
// (0 = DefaultTimeout), and returns the body of a 200 answer.
func HTTPGet(t testing.TB, n ns.NetNS, url string, timeout time.Duration) ([]byte, error) {
	t.Helper()
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := do(n, func() error {
				var d net.Dialer
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: timeout}
	resp, err := cl.Get(url)
	if err != nil {
		return nil, fmt.Errorf("cnitest: GET %s from %s: %w", url, nsPath(n), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxServeBytes+1))
	if err != nil {
		return nil, fmt.Errorf("cnitest: GET %s: body: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("cnitest: GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}
