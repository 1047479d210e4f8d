// Package daemon owns the stack daemon (`cni-userstack serve`): the
// HTTP+JSON API on a unix socket, the attachment records on disk, start-up
// recovery, the attacher that turns each pod link into a NIC of the
// userspace stack with the uplink beside it, proxy mode's divert rule
// (divert.go), and the wiring of the proxy engine to the attachments.
//
// Not owned here: the veth pairs and namespaces (veth), the stack itself
// (netstack), the relays, DNS and port-mapping listeners (daemon/proxy),
// what the plugin sends (plugin; the wire types are in daemon/api), the
// Kubernetes node agent of `serve --kubernetes` (daemon/kube: the Node
// informer and the routes to other nodes' pod CIDRs; kubeagent.go starts
// it beside the API and turns host IPv4 forwarding on).
//
// # Theory of operation
//
// One Daemon serves one stack netns. Every mutating call (attach, detach,
// GC) runs under Daemon.mu, one at a time: an attach is a few syscalls and
// one fsync, and serialising keeps the records, the stack and the host
// routes in one order. One step of a detach runs outside: closing the
// detached NIC's AF_PACKET sockets, which waits for an RCU grace period in
// the kernel; the pod is out of the stack and its record gone by then,
// and DELs of many pods at once close their sockets side by side
// (Attacher.Unplug). A DEL answers only once its sockets are closed. The record of an attachment is written (temp file,
// fsync, rename, fsync dir) after the stack has it and before the API
// answers; a detach removes the stack's NIC first and the record last, so
// a crash at any point leaves a record whose far end recovery can judge.
//
// A proxy-mode attachment is also a pod of the proxy engine: Attach adds
// it there after the stack has its NIC (its port mappings' host listeners
// open then; a host port in use undoes the stack attach and fails the
// call with code 102), Detach and GC remove it from the engine before the
// stack. Recovery re-adds every re-attached proxy-mode pod, so its port
// mappings listen again after a restart; a mapping that cannot listen any
// more (its host port taken meanwhile) is logged and the pod re-added
// without its mappings rather than cut off.
//
// On start every record is judged by PlanRecovery: pod netns and far end
// both present → re-attached (a new AF_PACKET socket, a new NIC, the same
// addresses, routes and neighbour); otherwise the record is removed, with
// its far end when that is still there. SIGTERM closes the listener and the
// stack but keeps records, far ends, the uplink and the host routes: a
// restarted daemon carries on where it stopped, as after kill -9.
//
// Dual stack: an attachment may carry an IPv6 side (IP6, Gateway6,
// Range6) beside its IPv4 one. The attacher (stack.go) gives the pod's NIC
// both gateways and the link's link-local address, and brings IPv6 up on
// the uplink (--uplink-subnet6) with the first such pod, so an IPv4-only
// node never touches the host's IPv6; the divert rule runs on both
// families' PREROUTING; records, recovery, GC and the host routes treat
// the IPv6 side as they treat the IPv4 one.
//
// Limits: MaxAttachments attachments per daemon (an attach beyond it is
// refused with code 11); request bodies are bounded by maxRequest.
//
// Read-only endpoints (inspect.go, inspect_stack.go) serve the inspect
// commands from the stack's own tables through Inspector; they take
// Daemon.mu only to copy the attachments that name the pods. Start-up is
// Recover, then Listen, then ready (startup in serve.go); the metrics and
// probe server (serve_metrics.go, daemon/metrics) starts before it, so
// /readyz says "not ready" while recovery runs, and /healthz (health.go)
// asks the API over its own socket and checks every attachment's NIC.
//
// Lock order: Daemon.mu > the proxy engine's locks or the attacher's
// locks (neither calls the other) > the stack's.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"
)

// MaxAttachments bounds the attachments of one daemon: one NIC, one local
// address and one static neighbour each, under the stack's bounds
// (dev.MaxNICs and route.MaxLocal are 4096, one of each is the uplink's).
// A dual-stack pod takes three local addresses and two neighbours: the
// attacher refuses one the local table cannot hold (at most 1364 of
// them), with code 102.
const MaxAttachments = 4000

// maxRequest bounds a request body.
const maxRequest = 1 << 20

// Attacher is what the daemon needs from the stack side. The real one is
// *StackAttacher; tests use a fake.
type Attacher interface {
	// Attach makes a's far end a NIC of the stack; it sets a.NIC and
	// a.StackMAC. On error nothing of a is left in the stack.
	Attach(a *api.Attachment) error
	// Detach removes a from the stack (NIC, routes, neighbour, the host
	// route of its range when it was the last pod there). Idempotent.
	Detach(a *api.Attachment) error
	// Unplug is Detach whose last step, release (closing the NIC's
	// sockets; nil when there is nothing to close), the caller runs
	// once, outside its own locks. Idempotent.
	Unplug(a *api.Attachment) (release func() error, err error)
	// RemoveLinks deletes a's veth pair (GC and recovery; DEL leaves that
	// to the plugin). Idempotent.
	RemoveLinks(a *api.Attachment) error
	// Presence reports which pod netns and far ends of recs exist.
	Presence(recs []api.Attachment) Presence
	// Reconcile removes what no attachment needs any more (host routes
	// of ranges whose pods went while the daemon was down).
	Reconcile() error
	// Status fills the stack part of a status answer.
	Status(st *api.Status)
	// Close stops the stack, keeping links and host routes.
	Close() error
}

// Proxy is what the daemon needs of the proxy engine. The real one is
// EngineProxy over a *proxy.Engine (engine.go); tests use a fake.
type Proxy interface {
	// AddPod makes a proxy-mode attachment a pod of the engine and opens
	// its port mappings' host listeners; on error nothing of it is left.
	AddPod(a *api.Attachment) error
	// RemovePod closes the pod's listeners and flows. Idempotent.
	RemovePod(id string)
	// Stats are the engine's counters.
	Stats() *api.ProxyStats
	// Close closes every relay and listener.
	Close() error
}

// Config configures a Daemon.
type Config struct {
	Socket     string
	StateDir   string
	StackNetNS string
	Version    string
	Logger     *slog.Logger
	// Proxy is the proxy engine over the attacher's stack; nil refuses
	// proxy-mode attachments.
	Proxy Proxy
	// Kube reports the Kubernetes route controller (serve --kubernetes)
	// in the status and the stats; nil when it does not run.
	Kube func() *api.KubeStatus
}

// Daemon is the API server and the attachment table.
type Daemon struct {
	cfg     Config
	store   *Store
	att     Attacher
	proxy   Proxy
	log     *slog.Logger
	started time.Time

	mu          sync.Mutex
	attachments map[string]*api.Attachment // by ID (far-end name); bound MaxAttachments

	insp inspectState // read-only endpoints, readiness, latency observer (inspect.go)
}

// New builds a daemon over an opened store and an attacher. It does not
// recover or listen yet: see Recover and Serve.
func New(cfg Config, store *Store, att Attacher) *Daemon {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	d := &Daemon{cfg: cfg, store: store, att: att, proxy: cfg.Proxy, log: cfg.Logger, started: time.Now(),
		attachments: map[string]*api.Attachment{}}
	d.insp.init()
	return d
}

// Recover loads the records and applies PlanRecovery: re-attach what still
// exists, remove the rest. A record that fails to re-attach is removed
// with its links (the pod will be re-added by its runtime or GC'd): a
// stack that cannot drive a link must not claim it.
func (d *Daemon) Recover() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	recs, bad, err := d.store.Load()
	if err != nil {
		return err
	}
	for _, b := range bad {
		d.log.Warn("unreadable attachment record left in place", "file", filepath.Join(d.store.Dir(), b))
	}
	plan := PlanRecovery(recs, d.att.Presence(recs))
	for i := range plan.Reattach {
		a := plan.Reattach[i]
		a.NIC, a.StackMAC = 0, ""
		if err := d.att.Attach(&a); err != nil {
			d.log.Error("re-attach failed; removing the record", "attachment", a.ID, "err", err)
			plan.Remove = append(plan.Remove, a)
			plan.RemoveLink[a.ID] = true
			continue
		}
		if err := d.readdPod(&a); err != nil {
			d.log.Error("re-add to the proxy failed; removing the record", "attachment", a.ID, "err", err)
			if derr := d.att.Detach(&a); derr != nil {
				d.log.Error("undo re-attach", "attachment", a.ID, "err", derr)
			}
			plan.Remove = append(plan.Remove, a)
			plan.RemoveLink[a.ID] = true
			continue
		}
		if err := d.store.Put(&a); err != nil {
			d.log.Error("rewrite record after re-attach", "attachment", a.ID, "err", err)
		}
		d.attachments[a.ID] = &a
		d.log.Info("re-attached", "attachment", a.String())
	}
	for i := range plan.Remove {
		a := &plan.Remove[i]
		if plan.RemoveLink[a.ID] {
			if err := d.att.RemoveLinks(a); err != nil {
				d.log.Warn("remove links of a stale attachment", "attachment", a.ID, "err", err)
			}
		}
		if err := d.store.Delete(a.ID); err != nil {
			d.log.Error("remove stale record", "attachment", a.ID, "err", err)
			continue
		}
		d.log.Info("removed stale attachment", "attachment", a.ID, "podNetNS", a.PodNetNS)
	}
	if err := d.att.Reconcile(); err != nil {
		d.log.Warn("reconcile host routes", "err", err)
	}
	return nil
}

// readdPod adds a re-attached proxy-mode pod to the engine. When its port
// mappings cannot be re-established (a host port taken while the daemon
// was down), the pod is added without them: its egress keeps working and
// the error names the mappings lost.
func (d *Daemon) readdPod(a *api.Attachment) error {
	if a.Mode == api.ModeRoute {
		return nil
	}
	if d.proxy == nil {
		return fmt.Errorf("proxy mode: this daemon runs without the proxy engine")
	}
	err := d.proxy.AddPod(a)
	if err == nil || len(a.PortMappings) == 0 {
		return err
	}
	bare := *a
	bare.PortMappings = nil
	if err2 := d.proxy.AddPod(&bare); err2 != nil {
		return err2
	}
	d.log.Error("port mappings not re-established after restart; the pod keeps its egress without them",
		"attachment", a.ID, "portMappings", fmt.Sprint(a.PortMappings), "err", err)
	return nil
}

// Listen creates the socket's directory (0700) and the socket (0600). A
// stale socket file (nothing listening) is replaced; a live one is an
// error: another daemon serves it.
func Listen(socket string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if fi, err := os.Lstat(socket); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket: remove it or pick another --socket", socket)
		}
		c, derr := net.DialTimeout("unix", socket, time.Second)
		if derr == nil {
			c.Close()
			return nil, fmt.Errorf("another daemon is listening on %s", socket)
		}
		if err := os.Remove(socket); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	// The umask makes the socket 0600 from birth: no window where another
	// user could connect.
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", socket)
	unix.Umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Handler is the HTTP API.
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.PathAttach, d.handleAttach)
	mux.HandleFunc("POST "+api.PathDetach, d.handleDetach)
	mux.HandleFunc("GET "+api.PathAttachments, d.handleList)
	mux.HandleFunc("GET "+api.PathStatus, d.handleStatus)
	mux.HandleFunc("POST "+api.PathGC, d.handleGC)
	d.registerInspect(mux)
	return mux
}

// Serve answers the API on l until ctx is done, then shuts the server down
// (bounded) and closes the proxy engine and the attacher.
func (d *Daemon) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		d.close()
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d.insp.shutdown() // running captures end: their connections go idle
	err := srv.Shutdown(sctx)
	if cerr := d.close(); err == nil {
		err = cerr
	}
	return err
}

// close closes the proxy engine (its relays use the stack) and then the
// attacher.
func (d *Daemon) close() error {
	var err error
	if d.proxy != nil {
		err = d.proxy.Close()
	}
	if cerr := d.att.Close(); err == nil {
		err = cerr
	}
	return err
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, e *api.Error) {
	status := http.StatusInternalServerError
	switch e.Code {
	case types.ErrInvalidNetworkConfig, types.ErrDecodingFailure, types.ErrUnsupportedField:
		status = http.StatusBadRequest
	case api.CodeAttachmentExists:
		status = http.StatusConflict
	case types.ErrTryAgainLater:
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(e)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeErr(w, api.Errorf(types.ErrDecodingFailure, "decode request: %v", err))
		return false
	}
	return true
}

func (d *Daemon) handleAttach(w http.ResponseWriter, r *http.Request) {
	var req api.AttachRequest
	if !decode(w, r, &req) {
		return
	}
	start := time.Now()
	a, e := d.Attach(req)
	d.observe(true, start, e == nil)
	if e != nil {
		writeErr(w, e)
		return
	}
	writeJSON(w, a)
}

// Attach attaches and records a pod link; the record is on disk when it
// returns nil.
func (d *Daemon) Attach(req api.AttachRequest) (*api.Attachment, *api.Error) {
	if err := req.Validate(); err != nil {
		return nil, api.Errorf(types.ErrInvalidNetworkConfig, "attach: %v", err)
	}
	if want := veth.HostIfName(req.ContainerID, req.IfName); req.HostIfName != want {
		return nil, api.Errorf(types.ErrInvalidNetworkConfig, "attach: hostIfName %q is not the name for container %s interface %s (%s)", req.HostIfName, req.ContainerID, req.IfName, want)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if old, ok := d.attachments[req.HostIfName]; ok {
		return nil, api.Errorf(api.CodeAttachmentExists, "container %s interface %s is already attached (%v, since %s); DEL it first",
			req.ContainerID, req.IfName, old.IP, old.Created.Format(time.RFC3339))
	}
	if len(d.attachments) >= MaxAttachments {
		return nil, api.Errorf(types.ErrTryAgainLater, "the daemon holds its maximum of %d attachments", MaxAttachments)
	}
	if req.Mode == api.ModeProxy && d.proxy == nil {
		return nil, api.Errorf(api.CodeStack, "attach: mode %q: this daemon runs without the proxy engine", req.Mode)
	}
	a := &api.Attachment{AttachRequest: req, ID: req.HostIfName, Created: time.Now().UTC()}
	if err := d.att.Attach(a); err != nil {
		return nil, api.Errorf(api.CodeStack, "attach %s to the stack: %v", a.ID, err)
	}
	proxied := a.Mode == api.ModeProxy
	if proxied {
		if err := d.proxy.AddPod(a); err != nil {
			if derr := d.att.Detach(a); derr != nil {
				d.log.Error("undo attach after a failed proxy add", "attachment", a.ID, "err", derr)
			}
			if errors.Is(err, syscall.EADDRINUSE) {
				return nil, api.Errorf(api.CodeStack, "attach %s: a host port of its port mappings is in use: %v; free the port or pick another hostPort", a.ID, err)
			}
			return nil, api.Errorf(api.CodeStack, "attach %s: the proxy engine refused the pod: %v", a.ID, err)
		}
	}
	if err := d.store.Put(a); err != nil {
		if proxied {
			d.proxy.RemovePod(a.ID)
		}
		if derr := d.att.Detach(a); derr != nil {
			d.log.Error("undo attach after a failed record write", "attachment", a.ID, "err", derr)
		}
		return nil, api.Errorf(types.ErrIOFailure, "record attachment %s in %s: %v", a.ID, d.store.Dir(), err)
	}
	d.attachments[a.ID] = a
	d.log.Info("attached", "attachment", a.String())
	cp := *a
	return &cp, nil
}

func (d *Daemon) handleDetach(w http.ResponseWriter, r *http.Request) {
	var req api.DetachRequest
	if !decode(w, r, &req) {
		return
	}
	start := time.Now()
	resp, e := d.Detach(req)
	d.observe(false, start, e == nil)
	if e != nil {
		writeErr(w, e)
		return
	}
	writeJSON(w, resp)
}

// Detach removes an attachment from the stack and the disk. Nothing
// attached is success with Found false.
func (d *Daemon) Detach(req api.DetachRequest) (*api.DetachResponse, *api.Error) {
	id := req.ID
	if id == "" {
		if req.ContainerID == "" || req.IfName == "" {
			return nil, api.Errorf(types.ErrInvalidNetworkConfig, "detach: id or containerID and ifName are required")
		}
		id = veth.HostIfName(req.ContainerID, req.IfName)
	}
	d.mu.Lock()
	a, ok := d.attachments[id]
	if !ok {
		d.mu.Unlock()
		return &api.DetachResponse{}, nil
	}
	release, e := d.unplugLocked(a)
	d.mu.Unlock()
	// The pod is out of the stack and its record gone; its NIC's sockets
	// close here, beside other DELs' (Attacher.Unplug), before the
	// answer, so a DEL that returned left nothing open.
	if release != nil {
		if err := release(); err != nil {
			d.log.Warn("close the NIC of a detached pod", "attachment", a.ID, "err", err)
		}
	}
	if e != nil {
		return nil, e
	}
	cp := *a
	return &api.DetachResponse{Found: true, Attachment: &cp}, nil
}

// detachLocked is Detach's work for GC: everything, release included,
// under d.mu.
func (d *Daemon) detachLocked(a *api.Attachment) *api.Error {
	release, e := d.unplugLocked(a)
	if release != nil {
		if err := release(); err != nil {
			d.log.Warn("close the NIC of a detached pod", "attachment", a.ID, "err", err)
		}
	}
	return e
}

// unplugLocked removes a from the proxy engine, the stack (all but its
// NIC's sockets: release) and the disk.
func (d *Daemon) unplugLocked(a *api.Attachment) (release func() error, _ *api.Error) {
	if a.Mode != api.ModeRoute && d.proxy != nil {
		d.proxy.RemovePod(a.ID)
	}
	release, err := d.att.Unplug(a)
	if err != nil {
		return release, api.Errorf(api.CodeStack, "detach %s from the stack: %v", a.ID, err)
	}
	delete(d.attachments, a.ID)
	if err := d.store.Delete(a.ID); err != nil {
		return release, api.Errorf(types.ErrIOFailure, "remove the record of %s: %v", a.ID, err)
	}
	d.log.Info("detached", "attachment", a.String())
	return release, nil
}

func (d *Daemon) handleList(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, d.List())
}

// List returns copies of the attachments sorted by ID.
func (d *Daemon) List() []api.Attachment {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]api.Attachment, 0, len(d.attachments))
	for _, a := range d.attachments {
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (d *Daemon) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, d.Status())
}

// Status reports the daemon and the stack.
func (d *Daemon) Status() *api.Status {
	d.mu.Lock()
	n := len(d.attachments)
	d.mu.Unlock()
	st := &api.Status{Version: d.cfg.Version, PID: os.Getpid(), Started: d.started, Socket: d.cfg.Socket,
		StateDir: d.cfg.StateDir, StackNetNS: d.cfg.StackNetNS, Attachments: n, Ready: d.Ready()}
	d.att.Status(st)
	if d.proxy != nil {
		st.Proxy = d.proxy.Stats()
	}
	st.Metrics = d.insp.metrics.Load()
	if d.cfg.Kube != nil {
		st.Kubernetes = d.cfg.Kube()
	}
	return st
}

func (d *Daemon) handleGC(w http.ResponseWriter, r *http.Request) {
	var req api.GCRequest
	if !decode(w, r, &req) {
		return
	}
	resp, e := d.GC(req)
	if e != nil {
		writeErr(w, e)
		return
	}
	writeJSON(w, resp)
}

// GC removes every attachment of req.Network whose (container ID,
// interface) is not in req.Valid, with its veth pair. An error on one
// attachment does not stop the others; it is listed in the answer's
// Errors beside the removed ones.
func (d *Daemon) GC(req api.GCRequest) (*api.GCResponse, *api.Error) {
	if req.Network == "" {
		return nil, api.Errorf(types.ErrInvalidNetworkConfig, "gc: network is required")
	}
	valid := make(map[api.GCAttachment]bool, len(req.Valid))
	for _, v := range req.Valid {
		valid[v] = true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	resp := &api.GCResponse{Removed: []api.Attachment{}}
	ids := make([]string, 0, len(d.attachments))
	for id := range d.attachments {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		a := d.attachments[id]
		if a.Network != req.Network || valid[api.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName}] {
			continue
		}
		if e := d.detachLocked(a); e != nil {
			resp.Errors = append(resp.Errors, e.Error())
			continue
		}
		if err := d.att.RemoveLinks(a); err != nil {
			resp.Errors = append(resp.Errors, fmt.Sprintf("gc %s: %v", a.ID, err))
		}
		resp.Removed = append(resp.Removed, *a)
	}
	return resp, nil
}
