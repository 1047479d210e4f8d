package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/netstack/capture"
	"github.com/containernetworking/cni/pkg/types"
)

// The read-only endpoints of the API (daemon/api/inspect.go lists them):
// what `cni-userstack link`, `addr`, `route`, `neigh`, `ss`, `conntrack`,
// `stats` and `pcap` read. They take Daemon.mu only to copy the
// attachments that name the pods, never across a call into the stack, so
// an attach waits for none of them; the stack is read through Inspector
// under its own locks.
//
// Captures stream until their bounds, the client going away, or the
// daemon shutting down (Serve closes inspectState.stop before it waits
// for the connections). At most api.MaxCaptures run at once.

// inspectState is the daemon's state for the read-only endpoints and the
// probes.
type inspectState struct {
	captures atomic.Int32
	stopOnce sync.Once
	stop     chan struct{} // closed at shutdown: running captures end
	ready    atomic.Bool   // start-up recovery finished and the API listens
	observer Observer      // nil: no latency histograms
	metrics  atomic.Pointer[api.MetricsStatus]
}

// Observer receives the latency of each attach and detach the API
// served (the daemon's share of CNI ADD and DEL); the metrics implement
// it.
type Observer interface {
	ObserveAttach(d time.Duration, ok bool)
	ObserveDetach(d time.Duration, ok bool)
}

func (s *inspectState) init() { s.stop = make(chan struct{}) }

// shutdown ends running captures and turns readiness off: a daemon
// shutting down takes no new pods.
func (s *inspectState) shutdown() {
	s.ready.Store(false)
	s.stopOnce.Do(func() { close(s.stop) })
}

// SetReady marks start-up recovery as finished: /readyz and the status's
// Ready turn true.
func (d *Daemon) SetReady() { d.insp.ready.Store(true) }

// Ready reports whether start-up recovery finished.
func (d *Daemon) Ready() bool { return d.insp.ready.Load() }

// SetObserver makes o receive attach and detach latencies.
func (d *Daemon) SetObserver(o Observer) { d.insp.observer = o }

// observe reports one attach or detach to the observer.
func (d *Daemon) observe(attach bool, start time.Time, ok bool) {
	o := d.insp.observer
	if o == nil {
		return
	}
	if attach {
		o.ObserveAttach(time.Since(start), ok)
	} else {
		o.ObserveDetach(time.Since(start), ok)
	}
}

func (d *Daemon) registerInspect(mux *http.ServeMux) {
	mux.HandleFunc("GET "+api.PathLinks, d.handleLinks)
	mux.HandleFunc("GET "+api.PathRoutes, d.handleRoutes)
	mux.HandleFunc("GET "+api.PathNeighbours, d.handleNeighbours)
	mux.HandleFunc("GET "+api.PathSockets, d.handleSockets)
	mux.HandleFunc("GET "+api.PathConntrack, d.handleConntrack)
	mux.HandleFunc("GET "+api.PathStats, d.handleStats)
	mux.HandleFunc("GET "+api.PathCapture, d.handleCapture)
}

// Inspector is the stack's read side, nil when the attacher has none.
func (d *Daemon) Inspector() Inspector {
	i, _ := d.att.(Inspector)
	return i
}

func (d *Daemon) inspector(w http.ResponseWriter) Inspector {
	i := d.Inspector()
	if i == nil {
		writeErr(w, api.Errorf(api.CodeStack, "this daemon has no stack to inspect"))
	}
	return i
}

// podsByNIC names the pod of each attached NIC.
func (d *Daemon) podsByNIC() map[int]*api.LinkPod {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := make(map[int]*api.LinkPod, len(d.attachments))
	for _, a := range d.attachments {
		if a.NIC != 0 {
			m[a.NIC] = linkPod(a)
		}
	}
	return m
}

func linkPod(a *api.Attachment) *api.LinkPod {
	return &api.LinkPod{Attachment: a.ID, ContainerID: a.ContainerID, Namespace: a.PodNamespace, Name: a.PodName,
		IfName: a.IfName, Network: a.Network, Mode: a.Mode, IP: a.IP, IP6: a.IP6, MAC: a.PodMAC}
}

// Links is the NICs with their pods.
func (d *Daemon) Links() []api.Link {
	i := d.Inspector()
	if i == nil {
		return nil
	}
	pods := d.podsByNIC()
	links := i.Links()
	for k := range links {
		if p := pods[links[k].NIC]; p != nil {
			links[k].Kind, links[k].Pod = api.KindPod, p
		}
	}
	return links
}

func (d *Daemon) handleLinks(w http.ResponseWriter, r *http.Request) {
	if d.inspector(w) == nil {
		return
	}
	writeJSON(w, d.Links())
}

func (d *Daemon) handleRoutes(w http.ResponseWriter, r *http.Request) {
	i := d.inspector(w)
	if i == nil {
		return
	}
	pods := d.podsByNIC()
	rs := i.Routes()
	for k := range rs {
		rs[k].Pod = pods[rs[k].NIC].String()
	}
	writeJSON(w, rs)
}

func (d *Daemon) handleNeighbours(w http.ResponseWriter, r *http.Request) {
	i := d.inspector(w)
	if i == nil {
		return
	}
	pods := d.podsByNIC()
	ns := i.Neighbours()
	for k := range ns {
		ns[k].Pod = pods[ns[k].NIC].String()
	}
	writeJSON(w, ns)
}

// relayer is the proxy's flow list (EngineProxy).
type relayer interface{ Relays() []api.Relay }

func (d *Daemon) handleSockets(w http.ResponseWriter, r *http.Request) {
	i := d.inspector(w)
	if i == nil {
		return
	}
	proto := r.URL.Query().Get("proto")
	if proto != "" && proto != "tcp" && proto != "udp" {
		writeErr(w, api.Errorf(types.ErrInvalidNetworkConfig, "proto %q: want tcp, udp or nothing", proto))
		return
	}
	writeJSON(w, d.Sockets(i, proto))
}

// Sockets is the stack's sockets of proto with the proxy's relays: a TCP
// relay on the stack socket it uses, the others (UDP and ICMP echo
// flows, which share the intercept socket) apart.
func (d *Daemon) Sockets(i Inspector, proto string) *api.Sockets {
	out := &api.Sockets{Sockets: i.Sockets(proto)}
	rl, ok := d.proxy.(relayer)
	if !ok {
		return out
	}
	names := map[string]string{}
	for _, p := range d.podsByNIC() {
		names[p.Attachment] = p.String()
	}
	type key struct{ l, r string }
	byTuple := map[key]int{}
	for k, s := range out.Sockets {
		if s.Proto == "tcp" && s.Remote.IsValid() {
			byTuple[key{s.Local.String(), s.Remote.String()}] = k
		}
	}
	for _, r := range rl.Relays() {
		r.PodName = names[r.Pod]
		if r.Proto == "tcp" {
			if k, ok := byTuple[key{r.PodLocal.String(), r.PodRemote.String()}]; ok {
				rc := r
				out.Sockets[k].Relay = &rc
				continue
			}
		}
		if proto == "" || proto == r.Proto {
			out.Relays = append(out.Relays, r)
		}
	}
	return out
}

func (d *Daemon) handleConntrack(w http.ResponseWriter, r *http.Request) {
	i := d.inspector(w)
	if i == nil {
		return
	}
	entries := true
	if v := r.URL.Query().Get("entries"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeErr(w, api.Errorf(types.ErrInvalidNetworkConfig, "entries %q: want true or false", v))
			return
		}
		entries = b
	}
	writeJSON(w, i.Conntrack(entries))
}

// Stats is every counter of the stack and the daemon.
func (d *Daemon) Stats() *api.Stats {
	st := &api.Stats{Attached: map[api.Mode]int{api.ModeProxy: 0, api.ModeRoute: 0}}
	if i := d.Inspector(); i != nil {
		i.Counters(st)
	} else {
		var s api.Status
		d.att.Status(&s)
		st.Counters, st.NICs = s.Stack.Counters, s.Stack.NICs
	}
	if d.proxy != nil {
		st.Proxy = d.proxy.Stats()
	}
	if d.cfg.Kube != nil {
		st.Kubernetes = d.cfg.Kube()
	}
	d.mu.Lock()
	for _, a := range d.attachments {
		st.Attached[a.Mode]++
	}
	d.mu.Unlock()
	return st
}

func (d *Daemon) handleStats(w http.ResponseWriter, r *http.Request) { writeJSON(w, d.Stats()) }

// parseCapture reads a capture request from PathCapture's query.
func parseCapture(r *http.Request) (api.CaptureRequest, error) {
	q := r.URL.Query()
	req := api.CaptureRequest{NICs: q["nic"], Pods: q["pod"], Filter: q.Get("filter")}
	num := func(name string, max int) (int, error) {
		v := q.Get(name)
		if v == "" {
			return 0, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > max {
			return 0, fmt.Errorf("%s %q: want a number from 0 to %d", name, v, max)
		}
		return n, nil
	}
	var err error
	if req.Count, err = num("count", 1<<30); err != nil {
		return req, err
	}
	if req.Snaplen, err = num("snaplen", capture.DefaultSnaplen); err != nil {
		return req, err
	}
	if v := q.Get("duration"); v != "" {
		if req.Duration, err = time.ParseDuration(v); err != nil || req.Duration < 0 || req.Duration > api.MaxCaptureDuration {
			return req, fmt.Errorf("duration %q: want a duration from 0 to %v", v, api.MaxCaptureDuration)
		}
	}
	if _, err := capture.Parse(req.Filter); err != nil {
		return req, err
	}
	return req, nil
}

// captureNICs resolves a capture's NIC and pod selectors to NIC IDs; none
// selects every NIC.
func (d *Daemon) captureNICs(links []api.Link, req api.CaptureRequest) ([]int, string, error) {
	var ids []int
	seen := map[int]bool{}
	add := func(id int) {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	for _, n := range req.NICs {
		found := false
		for _, l := range links {
			if l.Name == n || strconv.Itoa(l.NIC) == n {
				add(l.NIC)
				found = true
				break
			}
		}
		if !found {
			return nil, "", fmt.Errorf("no NIC %q: `cni-userstack link` lists them", n)
		}
	}
	for _, p := range req.Pods {
		var match []api.Link
		for _, l := range links {
			if l.Pod != nil && podMatches(l.Pod, p) {
				match = append(match, l)
			}
		}
		switch {
		case len(match) == 0:
			return nil, "", fmt.Errorf("no pod %q (give its namespace/name, name, container ID or attachment ID: `cni-userstack link` lists them)", p)
		case len(match) > 1 && !sameContainer(match):
			return nil, "", fmt.Errorf("pod %q is ambiguous: it names %d pods", p, len(match))
		}
		for _, l := range match {
			add(l.NIC)
		}
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.NIC] = l.Name
	}
	sel := ids
	if len(sel) == 0 {
		for _, l := range links {
			sel = append(sel, l.NIC)
		}
	}
	sort.Ints(sel)
	parts := make([]string, 0, len(sel))
	for _, id := range sel {
		parts = append(parts, fmt.Sprintf("%d:%s", id, names[id]))
	}
	return ids, strings.Join(parts, ","), nil
}

// podMatches reports whether selector s names pod p: its attachment ID,
// container ID (or a prefix of at least 12 characters), namespace/name,
// or name.
func podMatches(p *api.LinkPod, s string) bool {
	switch {
	case s == p.Attachment, s == p.ContainerID:
		return true
	case len(s) >= 12 && strings.HasPrefix(p.ContainerID, s):
		return true
	case p.Name != "" && (s == p.Name || s == p.Namespace+"/"+p.Name):
		return true
	}
	return false
}

func sameContainer(ls []api.Link) bool {
	for _, l := range ls[1:] {
		if l.Pod.ContainerID != ls[0].Pod.ContainerID {
			return false
		}
	}
	return true
}

// errCaptureBusy: MaxCaptures are running.
var errCaptureBusy = errors.New("capture: busy")

func (d *Daemon) handleCapture(w http.ResponseWriter, r *http.Request) {
	i := d.inspector(w)
	if i == nil {
		return
	}
	req, err := parseCapture(r)
	if err != nil {
		writeErr(w, api.Errorf(types.ErrInvalidNetworkConfig, "capture: %v", err))
		return
	}
	nics, names, err := d.captureNICs(d.Links(), req)
	if err != nil {
		writeErr(w, api.Errorf(types.ErrInvalidNetworkConfig, "capture: %v", err))
		return
	}
	if n := d.insp.captures.Add(1); n > api.MaxCaptures {
		d.insp.captures.Add(-1)
		writeErr(w, api.Errorf(types.ErrTryAgainLater, "capture: %d captures are running already, the most the daemon allows: %v", api.MaxCaptures, errCaptureBusy))
		return
	}
	defer d.insp.captures.Add(-1)
	h := w.Header()
	h.Set("Content-Type", "application/vnd.tcpdump.pcap")
	h.Set(api.HeaderCaptureNICs, names)
	h.Set("Trailer", api.TrailerCaptured+", "+api.TrailerDropped+", "+api.TrailerMatched)
	w.WriteHeader(http.StatusOK)
	flush := func() {}
	if f, ok := w.(http.Flusher); ok {
		flush = f.Flush
	}
	d.log.Info("capture started", "nics", names, "filter", req.Filter, "count", req.Count, "duration", req.Duration)
	st, err := i.Capture(r.Context(), d.insp.stop, w, flush, nics, req)
	h.Set(api.TrailerCaptured, strconv.FormatUint(st.Written, 10))
	h.Set(api.TrailerDropped, strconv.FormatUint(st.Dropped, 10))
	h.Set(api.TrailerMatched, strconv.FormatUint(st.Matched, 10))
	d.log.Info("capture ended", "nics", names, "written", st.Written, "dropped", st.Dropped, "err", err)
}
