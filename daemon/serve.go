package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/daemon/metrics"
	"github.com/cni-userstack/cni-userstack/daemon/proxy"
	"github.com/cni-userstack/cni-userstack/netstack/link/afpacket"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/spf13/pflag"
)

// DefaultStateDir holds the daemon's records and locks.
const DefaultStateDir = "/var/lib/cni-userstack"

// NodeNameEnv names this node when --node-name is not given.
const NodeNameEnv = "NODE_NAME"

// ServeFlags are the flags of `cni-userstack serve`.
type ServeFlags struct {
	Socket     string
	StateDir   string
	StackNetNS string
	// LockDir holds the claim files that keep a second daemon off this
	// one's stack netns and uplink (claim.go).
	LockDir          string
	LogLevel         string
	UplinkSubnet     string
	UplinkSubnet6    string
	UplinkHostIfName string
	// Rules is a netfilter ruleset file (netstack/netfilter's
	// iptables-save-like text) loaded into the stack at start.
	Rules string
	// ConntrackMax bounds the stack's connection table
	// (conntrack.Config.Max, the kernel's nf_conntrack_max).
	ConntrackMax int
	// Nice is the nice value of the daemon's threads (nice.go).
	Nice int
	// Proxy engine settings (daemon/proxy.Config).
	ResolvConf          string
	ProxyConnectTimeout time.Duration
	ProxyUDPIdleTimeout time.Duration
	ProxyMaxFlowsPerPod int
	// TCP keepalive of both sockets of every proxy relay
	// (daemon/proxy.Config.KeepAlive*); Idle 0 turns it off.
	ProxyKeepAliveIdle     time.Duration
	ProxyKeepAliveInterval time.Duration
	ProxyKeepAliveCount    int
	// BusyPoll is the AF_PACKET links' busy-poll budget
	// (afpacket.Config.BusyPoll); 0 is off.
	BusyPoll time.Duration
	// RxQueues is every link's afpacket.Config.Queues: receive
	// goroutines per link, flows spread over them by hash.
	RxQueues int
	// Kubernetes runs the Node informer and the route controller
	// (daemon/kube) beside the stack; Kubeconfig is its client's config
	// ("" is the in-cluster service account), NodeName this node's Node
	// object (default $NODE_NAME).
	Kubernetes bool
	Kubeconfig string
	NodeName   string
	// MetricsAddr is where /metrics, /healthz and /readyz are served
	// (daemon/metrics); "" turns them off.
	MetricsAddr string
}

// MaxConntrackMax bounds --conntrack-max: the table preallocates 16
// bytes a slot, and a tracked flow costs about half a KiB more.
const MaxConntrackMax = 1 << 22

// Defaults of the proxy engine's flags.
const (
	DefaultResolvConf          = "/etc/resolv.conf"
	DefaultProxyConnectTimeout = 10 * time.Second
	DefaultProxyUDPIdleTimeout = 60 * time.Second
	DefaultProxyMaxFlowsPerPod = 4096
	// The kernel's keepalive defaults (net.ipv4.tcp_keepalive_time,
	// _intvl, _probes) and bounds (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL:
	// 32767 s; MAX_TCP_KEEPCNT: 127).
	DefaultProxyKeepAliveIdle     = proxy.DefaultKeepAliveIdle
	DefaultProxyKeepAliveInterval = proxy.DefaultKeepAliveInterval
	DefaultProxyKeepAliveCount    = proxy.DefaultKeepAliveCount
	maxKeepAliveTime              = 32767 * time.Second
	maxKeepAliveCount             = 127
)

// AddFlags registers the serve flags on fs, with their defaults. The
// command line (cmd/cni-userstack) and ParseServeFlags share it, so a flag
// is declared, defaulted and documented in one place.
func (f *ServeFlags) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&f.Socket, "socket", api.DefaultSocket, "unix socket of the API (created 0600, its directory 0700)")
	fs.StringVar(&f.StateDir, "state-dir", DefaultStateDir, "directory of the attachment records and locks")
	fs.StringVar(&f.StackNetNS, "stack-netns", veth.DefaultStackNetNS, "name of the stack's network namespace under /var/run/netns (created when missing); one daemon per stack netns")
	fs.StringVar(&f.LockDir, "lock-dir", DefaultLockDir, "directory of the claim files (stack-<netns>.lock, uplink-<ifname>.lock) that refuse a second daemon on this one's stack netns or uplink; the same for every daemon of the node")
	fs.StringVar(&f.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.UplinkSubnet, "uplink-subnet", DefaultUplinkSubnet.String(), "route-mode uplink subnet, IPv4 /30 or shorter: the host end gets the first address, the stack the second")
	fs.StringVar(&f.UplinkSubnet6, "uplink-subnet6", DefaultUplinkSubnet6.String(), "the uplink's IPv6 subnet (/126 or shorter; a ULA by default), set up with the first dual-stack pod: the host end gets ::1, the stack ::2, and the host routes pods' IPv6 ranges via ::2")
	fs.StringVar(&f.UplinkHostIfName, "uplink-host-ifname", DefaultUplinkHostIfName, "name of the uplink's end in the host netns")
	fs.StringVar(&f.Rules, "rules", "", "netfilter ruleset file (iptables-save-like text) for the stack's hooks; empty: no rules (every policy ACCEPT)")
	fs.IntVar(&f.Nice, "nice", DefaultNice, "nice value of the daemon's threads, -20 (first) to 19 (last): below 0 a pod woken by the frames the daemon sends does not preempt it mid-batch and the daemon's wake-ups run ahead of the pods' own work (more connections/s), at the cost of the pods' CPU share and bulk throughput when the node is busy; 0, the default, keeps the value the daemon was started with; lowering it needs CAP_SYS_NICE (refused: logged, the daemon runs on)")
	fs.IntVar(&f.ConntrackMax, "conntrack-max", conntrack.DefaultMax, "most flows the stack's connection table tracks (nf_conntrack_max); a new flow past it evicts an unanswered one or a TCP flow already closing (TIME_WAIT and the like), or is dropped; 1 to "+strconv.Itoa(MaxConntrackMax))
	fs.StringVar(&f.ResolvConf, "resolv-conf", DefaultResolvConf, "resolv.conf whose nameservers the gateway's DNS relay (proxy mode) forwards to; re-read when it changes")
	fs.DurationVar(&f.ProxyConnectTimeout, "proxy-connect-timeout", DefaultProxyConnectTimeout, "proxy mode: bound of a pod's upstream TCP connect; the pod gets an RST when it passes")
	fs.DurationVar(&f.ProxyUDPIdleTimeout, "proxy-udp-idle-timeout", DefaultProxyUDPIdleTimeout, "proxy mode: a UDP or ICMP echo flow with no traffic for this long is closed")
	fs.IntVar(&f.ProxyMaxFlowsPerPod, "proxy-max-flows-per-pod", DefaultProxyMaxFlowsPerPod, "proxy mode: concurrent TCP+UDP+ICMP flows per pod; new flows past it are refused and counted")
	fs.StringVar(&f.MetricsAddr, "metrics-addr", metrics.DefaultAddr, "host:port serving Prometheus /metrics and the /healthz and /readyz probes (port 0 picks one; \"\" disables); a port in use is logged and the daemon runs on without them")
	fs.DurationVar(&f.ProxyKeepAliveIdle, "proxy-keepalive-idle", DefaultProxyKeepAliveIdle, "proxy mode: TCP keepalive of both sockets of a relay: idle time before the first probe (whole seconds, at most 32767s; the kernel's tcp_keepalive_time by default); 0 turns keepalive off")
	fs.DurationVar(&f.ProxyKeepAliveInterval, "proxy-keepalive-interval", DefaultProxyKeepAliveInterval, "proxy mode: time between keepalive probes (whole seconds, at most 32767s; tcp_keepalive_intvl)")
	fs.IntVar(&f.ProxyKeepAliveCount, "proxy-keepalive-count", DefaultProxyKeepAliveCount, "proxy mode: unanswered keepalive probes after which a relay is closed (1..127; tcp_keepalive_probes)")
	fs.BoolVar(&f.Kubernetes, "kubernetes", false, "run the Kubernetes node agent: watch Nodes and route every other node's pod CIDRs via its InternalIP (host routes with proto 0x76); needs --node-name or $NODE_NAME")
	fs.StringVar(&f.Kubeconfig, "kubeconfig", "", "with --kubernetes: the kubeconfig of the API client; empty: the pod's in-cluster service account")
	fs.StringVar(&f.NodeName, "node-name", "", "with --kubernetes: this node's Node object (default: $"+NodeNameEnv+", set from the downward API in the DaemonSet)")
	fs.DurationVar(&f.BusyPoll, "busy-poll", afpacket.DefaultBusyPoll, "how long a link's receive goroutine keeps polling its empty AF_PACKET socket, and the proxy's host sockets, before it sleeps (NAPI busy polling, one link at a time per 2 CPUs, ended early when another thread wants the CPU): lower round-trip latency for up to this much CPU per idle read, at some cost to bulk throughput; 0 is off, at most "+afpacket.MaxBusyPoll.String())
	fs.IntVar(&f.RxQueues, "rx-queues", 0, "receive queues per link: AF_PACKET sockets in one PACKET_FANOUT group hashing flows, each read by its own goroutine, so one pod's flows use several CPUs; 0 is as many as CPUs up to 2, at most "+strconv.Itoa(afpacket.MaxQueues))
}

// Validate checks the flags' values together; its errors name the flag.
func (f *ServeFlags) Validate() error {
	switch {
	case f.LockDir == "":
		return fmt.Errorf("--lock-dir: a directory is required")
	case f.StackNetNS == "" || strings.Contains(f.StackNetNS, "/"):
		return fmt.Errorf("--stack-netns %q: a name under /var/run/netns is required", f.StackNetNS)
	case f.UplinkHostIfName == "":
		return fmt.Errorf("--uplink-host-ifname: a name is required")
	case f.ResolvConf == "":
		return fmt.Errorf("--resolv-conf: a file is required")
	case f.ProxyConnectTimeout <= 0:
		return fmt.Errorf("--proxy-connect-timeout %v: must be positive", f.ProxyConnectTimeout)
	case f.ProxyUDPIdleTimeout <= 0:
		return fmt.Errorf("--proxy-udp-idle-timeout %v: must be positive", f.ProxyUDPIdleTimeout)
	case f.ProxyMaxFlowsPerPod <= 0:
		return fmt.Errorf("--proxy-max-flows-per-pod %d: must be positive", f.ProxyMaxFlowsPerPod)
	case f.BusyPoll < 0 || f.BusyPoll > afpacket.MaxBusyPoll:
		return fmt.Errorf("--busy-poll %v: must be between 0 and %v", f.BusyPoll, afpacket.MaxBusyPoll)
	case f.Nice < -20 || f.Nice > 19:
		return fmt.Errorf("--nice %d: must be between -20 and 19", f.Nice)
	case f.ConntrackMax < 1 || f.ConntrackMax > MaxConntrackMax:
		return fmt.Errorf("--conntrack-max %d: must be between 1 and %d", f.ConntrackMax, MaxConntrackMax)
	case f.RxQueues < 0 || f.RxQueues > afpacket.MaxQueues:
		return fmt.Errorf("--rx-queues %d: must be between 0 (the default) and %d", f.RxQueues, afpacket.MaxQueues)
	case f.ProxyKeepAliveIdle != 0 && !keepAliveTime(f.ProxyKeepAliveIdle):
		return fmt.Errorf("--proxy-keepalive-idle %v: must be 0 (off) or whole seconds from 1s to %v", f.ProxyKeepAliveIdle, maxKeepAliveTime)
	case !keepAliveTime(f.ProxyKeepAliveInterval):
		return fmt.Errorf("--proxy-keepalive-interval %v: must be whole seconds from 1s to %v", f.ProxyKeepAliveInterval, maxKeepAliveTime)
	case f.ProxyKeepAliveCount < 1 || f.ProxyKeepAliveCount > maxKeepAliveCount:
		return fmt.Errorf("--proxy-keepalive-count %d: must be between 1 and %d", f.ProxyKeepAliveCount, maxKeepAliveCount)
	}
	if f.Kubernetes && f.NodeName == "" {
		f.NodeName = os.Getenv(NodeNameEnv)
	}
	switch {
	case f.Kubernetes && f.NodeName == "":
		return fmt.Errorf("--kubernetes: this node's name is unknown: pass --node-name or set $%s (the DaemonSet sets it from spec.nodeName)", NodeNameEnv)
	case !f.Kubernetes && (f.Kubeconfig != "" || f.NodeName != ""):
		return fmt.Errorf("--kubeconfig and --node-name need --kubernetes")
	}
	if _, err := f.subnet(); err != nil {
		return err
	}
	if _, err := f.subnet6(); err != nil {
		return err
	}
	if err := checkMetricsAddr(f.MetricsAddr); err != nil {
		return err
	}
	if _, err := f.level(); err != nil {
		return err
	}
	return nil
}

// ParseServeFlags parses the arguments after "serve" (for tests and
// callers without a command line of their own).
func ParseServeFlags(args []string, stderr io.Writer) (*ServeFlags, error) {
	f := &ServeFlags{}
	fs := pflag.NewFlagSet("cni-userstack serve", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	f.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("serve: unexpected arguments %q", fs.Args())
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return f, nil
}

// keepAliveTime reports whether d is a keepalive time the kernel takes as
// is: whole seconds (TCP_KEEPIDLE and TCP_KEEPINTVL count seconds) from 1
// to 32767.
func keepAliveTime(d time.Duration) bool {
	return d >= time.Second && d <= maxKeepAliveTime && d%time.Second == 0
}

func (f *ServeFlags) subnet() (netip.Prefix, error) {
	p, err := netip.ParsePrefix(f.UplinkSubnet)
	if err != nil {
		return p, fmt.Errorf("--uplink-subnet: %v", err)
	}
	if _, _, err := UplinkAddrs(p); err != nil {
		return p, fmt.Errorf("--uplink-subnet: %v", err)
	}
	return p.Masked(), nil
}

func (f *ServeFlags) subnet6() (netip.Prefix, error) {
	p, err := netip.ParsePrefix(f.UplinkSubnet6)
	if err != nil {
		return p, fmt.Errorf("--uplink-subnet6: %v", err)
	}
	if _, _, err := UplinkAddrs6(p); err != nil {
		return p, fmt.Errorf("--uplink-subnet6: %v", err)
	}
	return p.Masked(), nil
}

func (f *ServeFlags) level() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(f.LogLevel))); err != nil {
		return l, fmt.Errorf("--log-level %q: want debug, info, warn or error", f.LogLevel)
	}
	return l, nil
}

// Run is `cni-userstack serve`: claim the state dir, the stack netns and
// the uplink (a second daemon on any of them refuses to start, naming the
// first), build the stack and the proxy engine over it, recover the
// recorded attachments, listen, and serve until SIGTERM or SIGINT. Records, links and host routes are kept
// on exit. f must have passed Validate.
func Run(f *ServeFlags, version string, stderr io.Writer) error {
	lvl, _ := f.level()
	subnet, _ := f.subnet()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	if f.Nice != 0 { // 0 keeps the value the daemon was started with
		if err := setNice(f.Nice); err != nil {
			log.Warn("the daemon's threads keep their nice value", "err", err)
		}
	}
	checkOpenFileLimit(f.ProxyMaxFlowsPerPod, log)

	rules, err := loadRules(f.Rules)
	if err != nil {
		return err
	}
	var agent *kubeAgent
	if f.Kubernetes {
		if agent, err = newKubeAgent(f, version, log); err != nil {
			return err
		}
		// Deferred before the signal context's cancel, so it runs after it.
		defer agent.stop()
	}
	// Before anything touches the stack netns or the uplink (claim.go).
	held, err := takeClaims(f, f.StackNetNS)
	if err != nil {
		return err
	}
	defer held.Close()
	// Probes answer from here on: /readyz is "not ready" until recovery
	// finished and the API listens.
	mr := startMetrics(f.MetricsAddr, version, log)
	defer mr.close()
	store, err := OpenStore(f.StateDir)
	if err != nil {
		return err
	}
	subnet6, _ := f.subnet6() // Validate checked it
	att, err := NewStackAttacher(StackConfig{StackNetNS: f.StackNetNS, UplinkSubnet: subnet, UplinkSubnet6: subnet6,
		UplinkHostIfName: f.UplinkHostIfName, BusyPoll: f.BusyPoll, RxQueues: f.RxQueues, ConntrackMax: f.ConntrackMax, Logger: log})
	if err != nil {
		return err
	}
	if rules != nil {
		if err := att.Netfilter().Load(rules); err != nil {
			att.Close()
			return fmt.Errorf("--rules %s: %w", f.Rules, err)
		}
		log.Info("netfilter ruleset loaded", "file", f.Rules)
	}
	px, err := NewEngineProxy(att.Stack(), f, log)
	if err != nil {
		att.Close()
		return err
	}
	att.SetBusyPollAlso(px.Engine().PollHost)
	cfg := Config{Socket: f.Socket, StateDir: f.StateDir, StackNetNS: f.StackNetNS, Version: version, Logger: log, Proxy: px}
	if agent != nil {
		cfg.Kube = agent.status
	}
	d := New(cfg, store, att)
	mr.attach(d)
	l, err := startup(d, f.Socket)
	if err != nil {
		d.close()
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("serving", "socket", f.Socket, "stateDir", f.StateDir, "stackNetNS", f.StackNetNS,
		"attachments", len(d.List()), "pid", os.Getpid(), "version", version, "kubernetes", f.Kubernetes)
	if agent != nil {
		agent.start(ctx, log)
	}
	err = d.Serve(ctx, l)
	os.Remove(f.Socket)
	log.Info("stopped; attachments kept on disk for the next start", "err", err)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// startup recovers d's recorded attachments, then opens the API socket,
// then marks d ready: /readyz says ready only once recovery finished and
// the plugin can reach the API.
func startup(d *Daemon, socket string) (net.Listener, error) {
	if err := d.Recover(); err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	l, err := Listen(socket)
	if err != nil {
		return nil, err
	}
	d.SetReady()
	return l, nil
}

// loadRules reads and parses a --rules file; nil without one. Errors name
// the file, line and column.
func loadRules(path string) (*netfilter.Ruleset, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--rules: %w", err)
	}
	rs, err := netfilter.ParseRules(string(b))
	if err != nil {
		return nil, fmt.Errorf("--rules %s: %w", path, err)
	}
	return rs, nil
}
