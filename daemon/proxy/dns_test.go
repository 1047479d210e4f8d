package proxy

import (
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"reflect"
	"sync"
	"testing"
	"time"
)

// fakeResolver answers every A query on addr:53 (UDP and TCP) with answer.
type fakeResolver struct {
	addr   netip.Addr
	answer netip.Addr
}

// startResolver listens on a random 127.83.x.y:53; it needs root for the
// port.
func startResolver(t *testing.T, answer string) *fakeResolver {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the fake resolver listens on port 53: needs root")
	}
	for range 20 {
		a := netip.AddrFrom4([4]byte{127, 83, byte(rand.IntN(250) + 1), byte(rand.IntN(250) + 1)})
		uc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 53)))
		if err != nil {
			continue
		}
		ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, 53)))
		if err != nil {
			uc.Close()
			continue
		}
		fr := &fakeResolver{addr: a, answer: netip.MustParseAddr(answer)}
		var wg sync.WaitGroup
		t.Cleanup(func() { uc.Close(); ln.Close(); wg.Wait() })
		wg.Add(2)
		go func() {
			defer wg.Done()
			b := make([]byte, 4096)
			for {
				n, from, err := uc.ReadFromUDPAddrPort(b)
				if err != nil {
					return
				}
				uc.WriteToUDPAddrPort(fr.respond(b[:n]), from)
			}
		}()
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer c.Close()
					c.SetDeadline(time.Now().Add(5 * time.Second))
					// RFC 7766 §8: two-byte length prefix.
					for {
						var l [2]byte
						if _, err := io.ReadFull(c, l[:]); err != nil {
							return
						}
						q := make([]byte, binary.BigEndian.Uint16(l[:]))
						if _, err := io.ReadFull(c, q); err != nil {
							return
						}
						r := fr.respond(q)
						c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(r))))
						c.Write(r)
					}
				}()
			}
		}()
		return fr
	}
	t.Fatal("no free 127.83.x.y:53")
	return nil
}

// respond echoes the question with one A record (RFC 1035 §4.1).
func (fr *fakeResolver) respond(q []byte) []byte {
	r := append([]byte(nil), q...)
	r[2] |= 0x80                             // QR
	binary.BigEndian.PutUint16(r[6:], 1)     // ANCOUNT
	binary.BigEndian.PutUint16(r[10:], 0)    // ARCOUNT
	r = append(r, 0xc0, 12, 0, 1, 0, 1)      // name → the question, A, IN
	r = append(r, 0, 0, 0, 60, 0, 4)         // TTL, RDLENGTH
	return append(r, fr.answer.AsSlice()...) // RDATA
}

// query builds an A query for name with id.
func query(id uint16, name string) []byte {
	q := binary.BigEndian.AppendUint16(nil, id)
	q = append(q, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0) // RD, QDCOUNT 1
	start := 0
	for i := 0; i <= len(name); i++ {
		if i == len(name) || name[i] == '.' {
			q = append(q, byte(i-start))
			q = append(q, name[start:i]...)
			start = i + 1
		}
	}
	return append(q, 0, 0, 1, 0, 1)
}

// answerOf returns the last four bytes (the A record's RDATA) of r.
func answerOf(t *testing.T, r []byte, id uint16) netip.Addr {
	t.Helper()
	if len(r) < 16 || binary.BigEndian.Uint16(r) != id || r[2]&0x80 == 0 {
		t.Fatalf("bad response % x", r)
	}
	return netip.AddrFrom4([4]byte(r[len(r)-4:]))
}

func (r *rig) podDNSUDP(t *testing.T, id uint16) netip.Addr {
	t.Helper()
	c, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(gwAddr, 53))
	must(t, err)
	defer c.Close()
	c.Write(query(id, "example.test"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 512)
	n, err := c.Read(b)
	if err != nil {
		t.Fatalf("pod DNS over UDP: %v", err)
	}
	return answerOf(t, b[:n], id)
}

func TestDNSRelay(t *testing.T) {
	first := startResolver(t, "192.0.2.1")
	second := startResolver(t, "192.0.2.2")
	r := newRig(t, nil)
	write := func(body string, age time.Duration) {
		must(t, os.WriteFile(r.resolv, []byte(body), 0o644))
		mt := time.Now().Add(age)
		must(t, os.Chtimes(r.resolv, mt, mt))
	}
	write("# test\nsearch example\nnameserver "+first.addr.String()+"\nnameserver "+second.addr.String()+"\n", -time.Minute)

	if got := r.podDNSUDP(t, 0x1234); got != first.answer {
		t.Errorf("UDP answer %v, want the first nameserver's %v", got, first.answer)
	}

	// DNS over TCP (RFC 7766) to the gateway, relayed whole.
	c, err := r.pod.DialTCP(ctxT(t, 5*time.Second), netip.AddrPort{}, netip.AddrPortFrom(gwAddr, 53))
	must(t, err)
	q := query(0x4321, "example.test")
	c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		t.Fatalf("pod DNS over TCP: %v", err)
	}
	resp := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, resp); err != nil {
		t.Fatal(err)
	}
	if got := answerOf(t, resp, 0x4321); got != first.answer {
		t.Errorf("TCP answer %v", got)
	}
	c.Close()

	// A changed file is re-read: a dead first nameserver (nothing on
	// its port 53) is skipped for the next one in order.
	dead := netip.MustParseAddr("127.83.255.254")
	write("nameserver "+dead.String()+"\nnameserver "+second.addr.String()+"\n", 0)
	if got := r.podDNSUDP(t, 0x5555); got != second.answer {
		t.Errorf("after the change: answer %v, want %v", got, second.answer)
	}
	s := r.e.Stats()
	if s.DNSQueries != 3 || s.DNSFailures != 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestParseResolvConf(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
	}{
		{"empty", "", nil},
		{"comments and options", "# x\n; y\noptions ndots:5\nsearch a b\nnameserver 10.1.1.1 # hi\n", []string{"10.1.1.1:53"}},
		{"MAXNS is three", "nameserver 1.1.1.1\nnameserver 2.2.2.2\nnameserver 3.3.3.3\nnameserver 4.4.4.4\n",
			[]string{"1.1.1.1:53", "2.2.2.2:53", "3.3.3.3:53"}},
		{"IPv6 and junk", "nameserver ::1\nnameserver not-an-ip\nnameserver\n", []string{"[::1]:53"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, a := range parseResolvConf([]byte(tt.in)) {
				got = append(got, a.String())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}
