package inet

import (
	"net/netip"
	"sync/atomic"
)

// EchoRequest is a diverted echo request, ICMP (RFC 792) or ICMPv6 (RFC
// 4443 §4.1): its addresses, identifier, sequence number and data, as
// proxy mode hands it to the daemon (ipv4.EchoRequest and
// ipv6.EchoRequest are this type). Payload and Header are valid only
// during the EchoFunc call.
type EchoRequest struct {
	Src, Dst netip.Addr
	ID, Seq  uint16
	Payload  []byte
	// Header is the request as it arrived, up to its data: the IP header
	// (IPv4 with its options, IPv6 with any extension headers) and the
	// 8-byte ICMP or ICMPv6 header, which an error about the request
	// quotes first (RFC 792 and RFC 1122 §3.2.2; RFC 4443 §2.4(c)).
	Header []byte
}

// EchoFunc receives a diverted echo request. It must not block: it runs
// on the receiving NIC's goroutine.
type EchoFunc func(r EchoRequest)

// EchoInterceptor holds the EchoFunc an IP layer hands diverted echo
// requests to (SetEchoInterceptor); the receive path loads it without a
// lock.
type EchoInterceptor struct {
	fn atomic.Pointer[EchoFunc]
}

// Set installs fn; nil removes the interceptor.
func (e *EchoInterceptor) Set(fn EchoFunc) {
	if fn == nil {
		e.fn.Store(nil)
		return
	}
	e.fn.Store(&fn)
}

// Load is the installed EchoFunc, nil when there is none.
func (e *EchoInterceptor) Load() EchoFunc {
	if p := e.fn.Load(); p != nil {
		return *p
	}
	return nil
}
