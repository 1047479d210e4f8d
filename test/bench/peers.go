package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// This file holds the two relays the harness builds itself: the gVisor
// netstack relay (test/bench/gvisorrelay, a module of its own) and the
// floor relay (test/bench/floorrelay), and the process plumbing they share.

// productModule is the module path of the product; the harness finds the
// source tree by walking up to the go.mod that declares it.
const productModule = "github.com/cni-userstack/cni-userstack"

// buildTimeout bounds one `go build` (the gVisor relay's first build
// downloads gVisor through the module proxy).
const buildTimeout = 10 * time.Minute

// sourceRoot is the product's module root, found from the working
// directory upwards (a nested module, such as gvisorrelay, is skipped).
func sourceRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && modulePath(string(b)) == productModule {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of %s above the working directory: run the harness from the source tree", productModule)
		}
		dir = parent
	}
}

// modulePath is the module directive of a go.mod ("" if none).
func modulePath(gomod string) string {
	for _, l := range strings.Split(gomod, "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

// requireVersion is the version a go.mod requires of mod ("" if none).
func requireVersion(gomod, mod string) string {
	for _, l := range strings.Split(gomod, "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(l), "require "))
		if len(f) >= 2 && f[0] == mod {
			return f[1]
		}
	}
	return ""
}

// goBuild runs `go build -o out .` in dir with extra environment.
func goBuild(ctx context.Context, dir, out string, env ...string) error {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return errors.New("the go command is not in PATH: it builds the relays")
	}
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, "build", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build in %s: %w\n%s", dir, err, tail(string(b), 2000))
	}
	return nil
}

// tools are the programs the harness builds, each with its build error.
type tools struct {
	gvisor, floor, hold, packet             string
	gvisorErr, floorErr, holdErr, packetErr error
	gvisorVersion                           string // the gVisor pseudo-version gvisorrelay/go.mod requires
}

// buildTools builds the programs need names ("gvisor", "floor" or
// "floor-epoll", "floor-route", "hold")
// into a temp dir (removed at exit). The gVisor relay is built in its own
// module with GOFLAGS=-mod=mod, so a fresh machine fetches gVisor through
// the module proxy.
func (h *harness) buildTools(need map[string]bool) *tools {
	t := &tools{}
	root, err := sourceRoot()
	if err != nil {
		t.gvisorErr, t.floorErr, t.holdErr, t.packetErr = err, err, err, err
		return t
	}
	dir := h.tb.TempDir()
	bench := filepath.Join(root, "test", "bench")
	if need["gvisor"] {
		src := filepath.Join(bench, "gvisorrelay")
		if b, err := os.ReadFile(filepath.Join(src, "go.mod")); err == nil {
			t.gvisorVersion = requireVersion(string(b), "gvisor.dev/gvisor")
		}
		t.gvisor = filepath.Join(dir, "gvisorrelay")
		t.gvisorErr = goBuild(h.ctx, src, t.gvisor, "GOFLAGS=-mod=mod -buildvcs=false")
	}
	if need["floor"] || need["floor-epoll"] {
		t.floor = filepath.Join(dir, "floorrelay")
		t.floorErr = goBuild(h.ctx, filepath.Join(bench, "floorrelay"), t.floor, "GOFLAGS=-buildvcs=false")
	}
	if need["floor-route"] || need["floor-route-b"] {
		t.packet = filepath.Join(dir, "floorpacket")
		t.packetErr = goBuild(h.ctx, filepath.Join(bench, "floorpacket"), t.packet, "GOFLAGS=-buildvcs=false")
	}
	if need["hold"] {
		t.hold = filepath.Join(dir, "holdserver")
		t.holdErr = goBuild(h.ctx, filepath.Join(bench, "holdserver"), t.hold, "GOFLAGS=-buildvcs=false")
	}
	return t
}

// lineProc is a helper process of ours that speaks in lines on stdout
// (the relays): "ready…" once, "memstats k=v…" per SIGUSR1.
type lineProc struct {
	cmd   *exec.Cmd
	done  chan error
	lines chan string // bound: 64 lines; a reader that falls behind loses the oldest
	log   *lockedBuilder
}

// startLineProc starts bin args inside the host netns (nsenter: the pid is
// the program's), registers its kill, and waits (bounded) for its ready
// line.
func (h *harness) startLineProc(name, bin string, args ...string) (*lineProc, string, error) {
	cmd := exec.Command("nsenter", append([]string{"--net=" + h.host.path(), "--", bin}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	p := &lineProc{cmd: cmd, done: make(chan error, 1), lines: make(chan string, 64), log: &lockedBuilder{}}
	cmd.Stderr = p.log
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start %s: %w", name, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default: // full: drop the oldest, keep the newest
				select {
				case <-p.lines:
				default:
				}
				p.lines <- sc.Text()
			}
		}
	}()
	go func() { wg.Wait(); p.done <- cmd.Wait() }()
	h.undo.add(name, func() { killWait(cmd, p.done, syscall.SIGTERM, 5*time.Second) })
	line, err := p.next("ready", 20*time.Second)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", name, err)
	}
	return p, line, nil
}

// logTail is the end of the process's stderr.
func (p *lineProc) logTail() string { return tail(p.log.String(), 600) }

// next waits for the next line starting with prefix (bounded by d).
func (p *lineProc) next(prefix string, d time.Duration) (string, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case l := <-p.lines:
			if strings.HasPrefix(l, prefix) {
				return l, nil
			}
		case err := <-p.done:
			p.done <- err
			return "", fmt.Errorf("exited (%v): %s", err, tail(p.log.String(), 600))
		case <-t.C:
			return "", fmt.Errorf("no %q line within %v: %s", prefix, d, tail(p.log.String(), 600))
		}
	}
}

// goMem is a helper's Go memory: heap and stack in use (a relay's after a
// forced GC), and the TCP flows it relays (-1: not said).
type goMem struct {
	heapInuse, stackInuse uint64
	flows                 int
}

// memstats asks the relay for its Go memory (SIGUSR1 → one memstats line).
func (p *lineProc) memstats() (goMem, error) {
	for len(p.lines) > 0 { // stale lines
		<-p.lines
	}
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return goMem{}, err
	}
	l, err := p.next("memstats", 30*time.Second)
	if err != nil {
		return goMem{}, err
	}
	return parseMemstats(l)
}

// parseMemstats reads "memstats heap_inuse=N … stack_inuse=N … tcp_flows=N".
func parseMemstats(l string) (goMem, error) {
	kv := map[string]uint64{}
	f := strings.Fields(l)
	if len(f) == 0 || f[0] != "memstats" {
		return goMem{}, fmt.Errorf("not a memstats line: %q", l)
	}
	for _, x := range f[1:] {
		k, v, ok := strings.Cut(x, "=")
		if !ok {
			return goMem{}, fmt.Errorf("memstats field %q", x)
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return goMem{}, fmt.Errorf("memstats field %q: %w", x, err)
		}
		kv[k] = n
	}
	for _, k := range []string{"heap_inuse", "stack_inuse", "tcp_flows"} {
		if _, ok := kv[k]; !ok {
			return goMem{}, fmt.Errorf("memstats line lacks %s: %q", k, l)
		}
	}
	return goMem{heapInuse: kv["heap_inuse"], stackInuse: kv["stack_inuse"], flows: int(kv["tcp_flows"])}, nil
}

// gvisorLink is the veth of a gVisor variant pod: eth0 in the pod, its
// stack end in a netns of its own with no kernel address, so that only the
// relay (AF_PACKET on it) answers.
type gvisorLink struct {
	linkNS ns.NetNS
	name   string       // the stack end's name in linkNS
	gw     netip.Prefix // 10.252.X.1/24: the relay's address, the pod's gateway
	pod    netip.Prefix // 10.252.X.2/24
}

// gvisorPodMTU is the pod link's MTU (the veth default, as every other
// variant at 1500).
const gvisorPodMTU = 1500

// newGVisorLink creates pod's eth0 and its stack end in a fresh netns.
func (h *harness) newGVisorLink(pod ns.NetNS) (*gvisorLink, error) {
	linkNS := cnitest.NewPodNS(h.tb)
	b := make([]byte, 4)
	rand.Read(b)
	g := &gvisorLink{linkNS: linkNS, name: "gv" + randHex(8),
		gw:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 252, b[0], 1}), 24),
		pod: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 252, b[0], 2}), 24)}
	// The stack end's kernel stays silent: no IPv6 (no DAD, no RS).
	if err := do(linkNS, func() error {
		for _, k := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+k+"/disable_ipv6", []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("link netns sysctls: %w", err)
	}
	lf, err := os.Open(linkNS.Path())
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	err = do(pod, func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: gvisorPodMTU}, PeerName: g.name,
			PeerNamespace: netlink.NsFd(int(lf.Fd()))}
		if err := netlink.LinkAdd(v); err != nil {
			return fmt.Errorf("veth: %w", err)
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: g.pod.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: g.gw.Addr().AsSlice()})
	})
	if err != nil {
		return nil, fmt.Errorf("pod link: %w", err)
	}
	err = do(linkNS, func() error {
		l, err := netlink.LinkByName(g.name)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		return nil, fmt.Errorf("stack end %s: %w", g.name, err)
	}
	return g, nil
}

// attachGVisor: the pod's eth0 is a veth whose other end the gVisor relay
// reads and writes with AF_PACKET; the relay runs in the host netns and
// dials the original destination from there.
func (h *harness) attachGVisor() (*attached, error) {
	if h.tools.gvisorErr != nil {
		return nil, fmt.Errorf("building the gVisor relay: %w", h.tools.gvisorErr)
	}
	pod := cnitest.NewPodNS(h.tb)
	g, err := h.newGVisorLink(pod)
	if err != nil {
		return nil, err
	}
	p, ready, err := h.startLineProc("gvisorrelay", h.tools.gvisor,
		"-netns", g.linkNS.Path(), "-link", g.name, "-addr", g.gw.String(),
		// Its flow table (4096 by default, 60 s idle) sized so that the
		// UDP query run, a flow per query, never fills it: ours evicts
		// answered flows gone quiet at its limit instead.
		"-max-udp-flows", "65536")
	if err != nil {
		return nil, err
	}
	P := h.host.addr()
	return &attached{pod: pod, listen: P, dial: P, pids: []int{p.cmd.Process.Pid}, mem: p.memstats, logs: p.logTail,
		note: fmt.Sprintf("pod %v → %v (the host's primary address) through gVisor %s (%s), relayed from the host netns",
			g.pod.Addr(), P, h.tools.gvisorVersion, strings.TrimPrefix(ready, "ready "))}, nil
}

// attachFloor: a ptp pod (the kernel veth path) whose host side is the
// floor relay in mode (goroutines or epoll): the pod dials its gateway,
// where the relay listens; the relay opens a second host TCP connection to
// the server on the host's primary address and splices between the two.
// The relay starts once the servers' ports are known (attached.relayFor).
func (h *harness) attachFloor(mode string) (*attached, error) {
	if h.tools.floorErr != nil {
		return nil, fmt.Errorf("building the floor relay: %w", h.tools.floorErr)
	}
	pod, gw, err := h.addPTPPod()
	if err != nil {
		return nil, err
	}
	P := h.host.addr()
	a := &attached{pod: pod, listen: P, dial: gw,
		note: fmt.Sprintf("pod → %v (its ptp gateway) where the floor relay (-mode %s) listens; the relay dials %v (the host's primary address) and splices", gw, mode, P)}
	a.relayFor = func(ports []int) error {
		var ps []string
		for _, p := range ports {
			ps = append(ps, strconv.Itoa(p))
		}
		p, _, err := h.startLineProc("floorrelay", h.tools.floor, "-mode", mode, "-listen", gw.String(), "-upstream", P.String(), "-ports", strings.Join(ps, ","))
		if err != nil {
			return err
		}
		a.pids = append(a.pids, p.cmd.Process.Pid)
		a.mem, a.logs = p.memstats, p.logTail
		return nil
	}
	return a, nil
}
