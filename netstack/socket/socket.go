// Package socket owns the protocol-independent socket layer
// (net/socket.c, net/ipv4/af_inet.c): the registry of protocols by
// (family, type, protocol) that inet_register_protosw fills (inetsw), the
// small Go socket API every protocol's socket implements (proto_ops), and
// adapters from those sockets to net.PacketConn and net.Conn with the
// standard library's error conventions.
//
// Not owned here: any protocol. UDP (udp.Proto) and, later, TCP register
// a Creator at stack start-up (netstack.New, like inet_init); this package
// imports neither.
//
// Errors. Sockets return the errno a system call would (syscall.Errno),
// os.ErrDeadlineExceeded when a deadline passes and net.ErrClosed after
// Close. The adapters wrap them as the net package does: a *net.OpError
// with Op "read", "write", "dial"..., Net "udp", the addresses as
// *net.UDPAddr, and an errno inside an *os.SyscallError, so
// errors.Is(err, syscall.ECONNREFUSED), errors.Is(err,
// os.ErrDeadlineExceeded) and errors.Is(err, net.ErrClosed) hold.
//
// Concurrency: the registry is read-mostly (an RWMutex, leaf lock); sockets
// and adapters are safe for concurrent use, their locking is the
// protocol's. Bound: MaxProtocols registrations.
package socket

import (
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// Family is an address family (AF_*).
type Family uint8

const (
	AFInet  Family = 2  // AF_INET
	AFInet6 Family = 10 // AF_INET6
)

// Type is a socket type (SOCK_*).
type Type uint8

const (
	SockStream Type = 1 // SOCK_STREAM
	SockDgram  Type = 2 // SOCK_DGRAM
	SockRaw    Type = 3 // SOCK_RAW
)

// Socket is what every protocol's socket implements (struct proto_ops,
// reduced to what a Go caller needs).
type Socket interface {
	// Bind binds a local address; port 0 picks an ephemeral port.
	Bind(addr netip.AddrPort) error
	// Connect sets the peer (a connection for streams, a default
	// destination and source filter for datagrams).
	Connect(addr netip.AddrPort) error
	LocalAddr() netip.AddrPort
	// RemoteAddr is invalid when not connected.
	RemoteAddr() netip.AddrPort
	// Deadlines are instants on the stack's clock (wall time with the
	// real clock); the zero time clears them.
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
	Close() error
}

// Datagram is a message-oriented socket (SOCK_DGRAM): udp.Socket.
type Datagram interface {
	Socket
	// SendTo sends one datagram; an invalid `to` means the connected peer.
	SendTo(p []byte, to netip.AddrPort) (int, error)
	// RecvFrom receives one datagram, truncating it to len(p).
	RecvFrom(p []byte) (int, netip.AddrPort, error)
}

// Creator makes a new, unbound socket of one protocol (the create half of
// inet_create: sk_alloc + sk_prot->init).
type Creator func() (Socket, error)

// Protosw is one registration (struct inet_protosw).
type Protosw struct {
	Family   Family
	Type     Type
	Protocol uint8 // IPPROTO_*; never 0
	Create   Creator
}

// MaxProtocols bounds the registry (inetsw holds a handful).
const MaxProtocols = 64

type swKey struct {
	f Family
	t Type
	p uint8
}

// Registry is the per-stack protocol switch (inetsw plus the family table
// of net_families).
type Registry struct {
	mu    sync.RWMutex
	sw    map[swKey]Protosw
	order []swKey // registration order, for the protocol-0 default
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{sw: map[swKey]Protosw{}} }

// Register adds a protocol (inet_register_protosw). Registering the same
// (family, type, protocol) twice is EEXIST; protocol 0 and a nil Creator
// are EINVAL; more than MaxProtocols is ENOBUFS.
func (r *Registry) Register(p Protosw) error {
	if p.Protocol == 0 || p.Create == nil {
		return syscall.EINVAL
	}
	k := swKey{p.Family, p.Type, p.Protocol}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.sw[k]; ok {
		return syscall.EEXIST
	}
	if len(r.sw) >= MaxProtocols {
		return syscall.ENOBUFS
	}
	r.sw[k] = p
	r.order = append(r.order, k)
	return nil
}

// Unregister removes a protocol (inet_unregister_protosw); sockets already
// created are unaffected.
func (r *Registry) Unregister(f Family, t Type, proto uint8) {
	k := swKey{f, t, proto}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.sw[k]; !ok {
		return
	}
	delete(r.sw, k)
	for i, o := range r.order {
		if o == k {
			r.order = append(r.order[:i:i], r.order[i+1:]...)
			break
		}
	}
}

// Create makes a socket (__sock_create → inet_create). Protocol 0 means
// the first protocol registered for the family and type (IPPROTO_IP as
// the wildcard: UDP for SOCK_DGRAM, TCP for SOCK_STREAM). Errors as
// Linux: EAFNOSUPPORT for a family nothing registered, ESOCKTNOSUPPORT for
// a type the family lacks, EPROTONOSUPPORT for a protocol the type lacks.
func (r *Registry) Create(f Family, t Type, proto uint8) (Socket, error) {
	r.mu.RLock()
	var (
		sw                   Protosw
		found, fam, typeSeen bool
	)
	for _, k := range r.order {
		if k.f != f {
			continue
		}
		fam = true
		if k.t != t {
			continue
		}
		typeSeen = true
		if proto == 0 || k.p == proto {
			sw, found = r.sw[k], true
			break
		}
	}
	r.mu.RUnlock()
	switch {
	case found:
		return sw.Create()
	case !fam:
		return nil, syscall.EAFNOSUPPORT
	case !typeSeen:
		return nil, syscall.ESOCKTNOSUPPORT
	}
	return nil, syscall.EPROTONOSUPPORT
}

// Protocols lists the registrations in registration order.
func (r *Registry) Protocols() []Protosw {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Protosw, 0, len(r.order))
	for _, k := range r.order {
		out = append(out, r.sw[k])
	}
	return out
}
