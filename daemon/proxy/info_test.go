package proxy

import (
	"io"
	"net/netip"
	"testing"
	"time"
)

// Relays lists a relayed TCP connection and a UDP flow with their pod
// side in the stack, their host socket and the bytes each way.
func TestRelays(t *testing.T) {
	r := newRig(t, nil)
	must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))

	tport := kernelListener(t, echoServe)
	c, err := r.dialPod(ctxT(t, 5*time.Second), server, tport)
	must(t, err)
	defer c.Close()
	msg := []byte("seventeen bytes!!")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	podTCP := c.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort()

	uport := udpEchoServer(t)
	u, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(server, uport))
	must(t, err)
	defer u.Close()
	if _, err := u.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	u.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := u.ReadFromUDPAddrPort(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	podUDP := u.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort()

	var tcpR, udpR *Relay
	deadline := time.Now().Add(5 * time.Second)
	for {
		tcpR, udpR = nil, nil
		rs := r.e.Relays()
		for i := range rs {
			switch rs[i].Proto {
			case "tcp":
				tcpR = &rs[i]
			case "udp":
				udpR = &rs[i]
			}
		}
		if (tcpR != nil && tcpR.ToPod == uint64(len(msg))) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // the pod's ACK of the echo
	}
	if tcpR == nil || udpR == nil {
		t.Fatalf("relays: tcp %+v udp %+v", tcpR, udpR)
	}
	if tcpR.Kind != RelayOutbound || tcpR.PodID != "p" || tcpR.PodRemote != podTCP ||
		tcpR.PodLocal != netip.AddrPortFrom(server, tport) || tcpR.HostRemote.Port() != tport || !tcpR.HostLocal.IsValid() ||
		tcpR.FromPod != uint64(len(msg)) || tcpR.ToPod != uint64(len(msg)) {
		t.Errorf("TCP relay: %+v (pod side %v)", *tcpR, podTCP)
	}
	if udpR.Kind != RelayOutbound || udpR.PodID != "p" || udpR.PodRemote != podUDP ||
		udpR.PodLocal != netip.AddrPortFrom(server, uport) || udpR.HostRemote.Port() != uport ||
		udpR.FromPod == 0 || udpR.ToPod == 0 {
		t.Errorf("UDP relay: %+v (pod side %v)", *udpR, podUDP)
	}
}
