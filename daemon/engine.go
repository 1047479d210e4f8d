package daemon

import (
	"cmp"
	"fmt"
	"log/slog"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/daemon/proxy"
	"github.com/cni-userstack/cni-userstack/netstack"
)

// EngineProxy is the daemon's Proxy over the real engine (daemon/proxy):
// it converts attachments to the engine's pods and its stats to the API's.
type EngineProxy struct {
	e *proxy.Engine
}

// NewEngineProxy starts the proxy engine over stack s with the serve
// flags' settings: its TCP, UDP and echo interceptors and the gateway's
// DNS relay run from here on, for whichever pods are added.
func NewEngineProxy(s *netstack.Stack, f *ServeFlags, log *slog.Logger) (*EngineProxy, error) {
	e, err := proxy.New(engineConfig(s, f, log))
	if err != nil {
		return nil, fmt.Errorf("proxy engine: %w", err)
	}
	return &EngineProxy{e: e}, nil
}

// engineConfig is the proxy engine's configuration from the serve flags.
func engineConfig(s *netstack.Stack, f *ServeFlags, log *slog.Logger) proxy.Config {
	return proxy.Config{
		Stack:          s,
		ConnectTimeout: f.ProxyConnectTimeout,
		UDPIdleTimeout: f.ProxyUDPIdleTimeout,
		MaxFlowsPerPod: f.ProxyMaxFlowsPerPod,
		// Flag 0 is off; the engine's zero is the default.
		KeepAliveIdle:     cmp.Or(f.ProxyKeepAliveIdle, -1),
		KeepAliveInterval: f.ProxyKeepAliveInterval,
		KeepAliveCount:    f.ProxyKeepAliveCount,
		ResolvConf:        f.ResolvConf,
		Logger:            log,
	}
}

// Engine is the engine under the adapter.
func (p *EngineProxy) Engine() *proxy.Engine { return p.e }

// AddPod adds a proxy-mode attachment: the pod is its address, its
// gateway (the address a loopback port-mapping client is shown as) and
// its port mappings.
func (p *EngineProxy) AddPod(a *api.Attachment) error { return p.e.AddPod(enginePod(a)) }

// RemovePod removes the pod's listeners and flows.
func (p *EngineProxy) RemovePod(id string) { p.e.RemovePod(id) }

// Stats converts the engine's counters.
func (p *EngineProxy) Stats() *api.ProxyStats { return apiProxyStats(p.e.Stats()) }

// Relays lists the engine's flows (`cni-userstack ss -p`).
func (p *EngineProxy) Relays() []api.Relay {
	rs := p.e.Relays()
	out := make([]api.Relay, 0, len(rs))
	for _, r := range rs {
		out = append(out, api.Relay{Kind: r.Kind, Proto: r.Proto, Pod: r.PodID, PodLocal: r.PodLocal, PodRemote: r.PodRemote,
			HostLocal: r.HostLocal, HostRemote: r.HostRemote, FromPod: r.FromPod, ToPod: r.ToPod})
	}
	return out
}

// Close closes every relay and listener of the engine.
func (p *EngineProxy) Close() error { return p.e.Close() }

func enginePod(a *api.Attachment) proxy.Pod {
	pod := proxy.Pod{ID: a.ID, Addr: a.IP.Addr(), Gateway: a.Gateway, Addr6: a.IP6.Addr(), Gateway6: a.Gateway6}
	for _, m := range a.PortMappings {
		pod.PortMappings = append(pod.PortMappings, proxy.PortMapping{
			HostPort: m.HostPort, ContainerPort: m.ContainerPort, Protocol: m.Protocol, HostIP: m.HostIP})
	}
	return pod
}

func apiProxyStats(s proxy.Stats) *api.ProxyStats {
	out := &api.ProxyStats{
		ActiveTCP: s.ActiveTCP, ActiveUDP: s.ActiveUDP, ActiveEcho: s.ActiveEcho, PendingTCP: s.PendingTCP,
		TCPAccepted: s.TCPAccepted, TCPRefused: s.TCPRefused, TCPTimeouts: s.TCPTimeouts, TCPUnreachable: s.TCPUnreachable,
		TCPNoResources: s.TCPNoResources, UDPNoResources: s.UDPNoResources, EchoNoResources: s.EchoNoResources,
		FlowLimitDrops: s.FlowLimitDrops, UDPFlowsOpened: s.UDPFlowsOpened, UDPPortUnreachables: s.UDPPortUnreachables,
		UDPICMPErrors: s.UDPICMPErrors,
		EchoRelayed:   s.EchoRelayed, EchoRawRelayed: s.EchoRawRelayed, EchoDenied: s.EchoDenied, EchoICMPErrors: s.EchoICMPErrors, EchoDropped: s.EchoDropped,
		DNSQueries: s.DNSQueries, DNSFailures: s.DNSFailures,
		PortMapConns: s.PortMapConns, EchoFlowsOpened: s.EchoFlowsOpened,
		UDPIdleTimeouts: s.UDPIdleTimeouts, UDPEvicted: s.UDPEvicted, UDPDropped: s.UDPDropped, EchoIdleTimeouts: s.EchoIdleTimeouts,
	}
	if len(s.Pods) > 0 {
		out.Pods = make(map[string]api.ProxyPodStats, len(s.Pods))
		for id, ps := range s.Pods {
			out.Pods[id] = api.ProxyPodStats{ActiveFlows: ps.ActiveFlows, FlowLimitDrops: ps.FlowLimitDrops}
		}
	}
	return out
}
