package env

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DNS message layout (RFC 1035 §4.1): a 12-byte header, then questions
// (QNAME as labels, QTYPE, QCLASS), then resource records. Only what a
// test resolver and its client need: one question, A records, name
// compression pointers skipped when reading.
const (
	dnsHeaderLen = 12
	dnsTypeA     = 1
	dnsClassIN   = 1
	dnsRcodeNX   = 3
	dnsRcodeFail = 2
	// maxDNSTCPMsg bounds a message read over TCP (its 2-byte length
	// prefix allows 65535; RFC 1035 §4.2.2).
	maxDNSTCPMsg = 65535
	// maxDNSConns bounds the TCP connections the test resolver serves at
	// once; more are closed at accept.
	maxDNSConns = 64
)

// DNSServer is a test resolver in the netns it was started in: it answers
// A queries for the names in its table over UDP and TCP on one address
// (RFC 1035 §4.2.1, §4.2.2), NXDOMAIN for other names, SERVFAIL for what
// it cannot parse. Queries counts what it answered per transport.
type DNSServer struct {
	Addr       netip.AddrPort
	udp        *net.UDPConn
	tcp        *net.TCPListener
	answers    map[string]netip.Addr // lower-case name without the final dot
	UDPQueries atomic.Int64
	TCPQueries atomic.Int64
	wg         sync.WaitGroup
}

// StartDNSServer listens on addr (UDP and TCP, the same port) and serves
// answers (name → IPv4 address; names are case-insensitive, a final dot is
// optional) until Close.
func StartDNSServer(addr netip.AddrPort, answers map[string]netip.Addr) (*DNSServer, error) {
	s := &DNSServer{Addr: addr, answers: map[string]netip.Addr{}}
	for n, a := range answers {
		s.answers[strings.TrimSuffix(strings.ToLower(n), ".")] = a
	}
	var err error
	if s.udp, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr)); err != nil {
		return nil, fmt.Errorf("env: DNS server UDP %v: %w", addr, err)
	}
	if s.tcp, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(addr)); err != nil {
		s.udp.Close()
		return nil, fmt.Errorf("env: DNS server TCP %v: %w", addr, err)
	}
	s.wg.Add(2)
	go s.serveUDP()
	go s.serveTCP()
	return s, nil
}

// Close stops both listeners and waits for the servers.
func (s *DNSServer) Close() {
	s.udp.Close()
	s.tcp.Close()
	s.wg.Wait()
}

func (s *DNSServer) serveUDP() {
	defer s.wg.Done()
	b := make([]byte, 65536)
	for {
		n, from, err := s.udp.ReadFromUDPAddrPort(b)
		if err != nil {
			return
		}
		if resp := s.answer(b[:n]); resp != nil {
			s.UDPQueries.Add(1)
			_, _ = s.udp.WriteToUDPAddrPort(resp, from)
		}
	}
}

func (s *DNSServer) serveTCP() {
	defer s.wg.Done()
	sem := make(chan struct{}, maxDNSConns)
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := s.tcp.AcceptTCP()
		if err != nil {
			return
		}
		select {
		case sem <- struct{}{}:
		default:
			c.Close()
			continue
		}
		conns.Add(1)
		go func() {
			defer func() { c.Close(); <-sem; conns.Done() }()
			for {
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				q, err := ReadDNSTCP(c)
				if err != nil {
					return
				}
				resp := s.answer(q)
				if resp == nil {
					return
				}
				s.TCPQueries.Add(1)
				if err := WriteDNSTCP(c, resp); err != nil {
					return
				}
			}
		}()
	}
}

// answer builds the response to query q, or nil when q is too short to
// carry an ID (nothing to answer to).
func (s *DNSServer) answer(q []byte) []byte {
	if len(q) < dnsHeaderLen {
		return nil
	}
	name, qtype, qend, err := parseQuestion(q)
	resp := make([]byte, dnsHeaderLen, 512)
	copy(resp, q[:4])
	resp[2] = 0x80 | (q[2] & 0x79) // QR=1, opcode and RD copied, AA=0, TC=0
	resp[3] = 0x80                 // RA=1
	if err != nil {
		resp[3] |= dnsRcodeFail
		return resp
	}
	binary.BigEndian.PutUint16(resp[4:], 1) // QDCOUNT
	resp = append(resp, q[dnsHeaderLen:qend]...)
	addr, ok := s.answers[name]
	switch {
	case !ok:
		resp[3] |= dnsRcodeNX
	case qtype == dnsTypeA:
		binary.BigEndian.PutUint16(resp[6:], 1) // ANCOUNT
		resp = append(resp, 0xc0, dnsHeaderLen) // pointer to the question's name
		resp = binary.BigEndian.AppendUint16(resp, dnsTypeA)
		resp = binary.BigEndian.AppendUint16(resp, dnsClassIN)
		resp = binary.BigEndian.AppendUint32(resp, 60) // TTL
		resp = binary.BigEndian.AppendUint16(resp, 4)
		a4 := addr.As4()
		resp = append(resp, a4[:]...)
	}
	return resp
}

// parseQuestion reads the first question of msg: its name (lower case,
// no final dot), type, and the offset just after it.
func parseQuestion(msg []byte) (name string, qtype uint16, end int, err error) {
	if binary.BigEndian.Uint16(msg[4:]) < 1 {
		return "", 0, 0, errors.New("no question")
	}
	var labels []string
	i := dnsHeaderLen
	for {
		if i >= len(msg) {
			return "", 0, 0, errors.New("question name runs past the message")
		}
		l := int(msg[i])
		if l == 0 {
			i++
			break
		}
		if l&0xc0 != 0 || i+1+l > len(msg) {
			return "", 0, 0, errors.New("bad label in question")
		}
		labels = append(labels, strings.ToLower(string(msg[i+1:i+1+l])))
		i += 1 + l
	}
	if i+4 > len(msg) {
		return "", 0, 0, errors.New("question truncated")
	}
	return strings.Join(labels, "."), binary.BigEndian.Uint16(msg[i:]), i + 4, nil
}

// BuildAQuery is a recursive A query for name with ID id.
func BuildAQuery(id uint16, name string) ([]byte, error) {
	q := make([]byte, dnsHeaderLen, 64)
	binary.BigEndian.PutUint16(q, id)
	q[2] = 0x01                          // RD
	binary.BigEndian.PutUint16(q[4:], 1) // QDCOUNT
	for _, l := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		if l == "" || len(l) > 63 {
			return nil, fmt.Errorf("env: bad DNS name %q", name)
		}
		q = append(q, byte(len(l)))
		q = append(q, l...)
	}
	q = append(q, 0)
	q = binary.BigEndian.AppendUint16(q, dnsTypeA)
	q = binary.BigEndian.AppendUint16(q, dnsClassIN)
	return q, nil
}

// ParseAAnswer checks that msg answers query id and returns its first A
// record (an error naming the RCODE when it has none).
func ParseAAnswer(msg []byte, id uint16) (netip.Addr, error) {
	if len(msg) < dnsHeaderLen {
		return netip.Addr{}, fmt.Errorf("env: DNS answer of %d bytes", len(msg))
	}
	if got := binary.BigEndian.Uint16(msg); got != id || msg[2]&0x80 == 0 {
		return netip.Addr{}, fmt.Errorf("env: DNS message is not the answer to query %d (id %d, flags %#x)", id, got, msg[2])
	}
	if rc := msg[3] & 0x0f; rc != 0 {
		return netip.Addr{}, fmt.Errorf("env: DNS answer RCODE %d", rc)
	}
	_, _, i, err := parseQuestion(msg)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("env: DNS answer: %w", err)
	}
	for n := binary.BigEndian.Uint16(msg[6:]); n > 0; n-- {
		// NAME: labels ending in 0, or a 2-byte compression pointer.
		for {
			if i >= len(msg) {
				return netip.Addr{}, errors.New("env: DNS answer truncated in a name")
			}
			if msg[i]&0xc0 == 0xc0 {
				i += 2
				break
			}
			if msg[i] == 0 {
				i++
				break
			}
			i += 1 + int(msg[i])
		}
		if i+10 > len(msg) {
			return netip.Addr{}, errors.New("env: DNS answer truncated in a record")
		}
		typ, class, rdlen := binary.BigEndian.Uint16(msg[i:]), binary.BigEndian.Uint16(msg[i+2:]), int(binary.BigEndian.Uint16(msg[i+8:]))
		i += 10
		if i+rdlen > len(msg) {
			return netip.Addr{}, errors.New("env: DNS answer truncated in RDATA")
		}
		if typ == dnsTypeA && class == dnsClassIN && rdlen == 4 {
			return netip.AddrFrom4([4]byte(msg[i : i+4])), nil
		}
		i += rdlen
	}
	return netip.Addr{}, errors.New("env: DNS answer has no A record")
}

// ReadDNSTCP reads one length-prefixed DNS message (RFC 1035 §4.2.2).
func ReadDNSTCP(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if n > maxDNSTCPMsg {
		return nil, fmt.Errorf("env: DNS TCP message of %d bytes", n)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return b, err
}

// WriteDNSTCP writes one length-prefixed DNS message.
func WriteDNSTCP(w io.Writer, msg []byte) error {
	if len(msg) > maxDNSTCPMsg {
		return fmt.Errorf("env: DNS message of %d bytes", len(msg))
	}
	_, err := w.Write(binary.BigEndian.AppendUint16(nil, uint16(len(msg))))
	if err == nil {
		_, err = w.Write(msg)
	}
	return err
}

// LookupA asks for name's A record over c (a connected UDP or TCP socket,
// told apart by its type) and waits up to timeout for the answer.
func LookupA(c net.Conn, name string, id uint16, timeout time.Duration) (netip.Addr, error) {
	q, err := BuildAQuery(id, name)
	if err != nil {
		return netip.Addr{}, err
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, ok := c.(*net.TCPConn); ok {
		if err := WriteDNSTCP(c, q); err != nil {
			return netip.Addr{}, fmt.Errorf("env: DNS query over TCP: %w", err)
		}
		resp, err := ReadDNSTCP(c)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("env: DNS answer over TCP: %w", err)
		}
		return ParseAAnswer(resp, id)
	}
	if _, err := c.Write(q); err != nil {
		return netip.Addr{}, fmt.Errorf("env: DNS query over UDP: %w", err)
	}
	b := make([]byte, 65536)
	n, err := c.Read(b)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("env: DNS answer over UDP: %w", err)
	}
	return ParseAAnswer(b[:n], id)
}
